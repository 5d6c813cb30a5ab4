"""Errors the CLI prints as one paragraph, without a traceback: wrong input (exit 2), or a run that cannot go on
(TrainingError, exit 1)."""


class LmforgeError(Exception):
    """Base class for input errors; the message must say what is wrong and where."""

    exit_code = 2


class ConfigError(LmforgeError):
    """A config key is unknown, has the wrong type, or conflicts with another key."""


class DataError(LmforgeError):
    """A data file is missing, unreadable or malformed; the message names file, record/line and field."""


class TrainingError(LmforgeError):
    """Training cannot go on (e.g. the loss keeps diverging); the message says what was saved and what to do."""

    exit_code = 1
