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


class DiskFullError(LmforgeError):
    """No space left on the device a run writes to; the message names the path and what was kept."""


# How a full disk shows through the writers a run uses: OSError errno ENOSPC/EDQUOT (Python, tokenizers), torch.save's
# "unexpected pos N vs M" from its zip writer, safetensors' Rust IoError "StorageFull".
_DISK_FULL_TEXT = ("No space left on device", "unexpected pos", "StorageFull", "Disk quota exceeded")


def is_disk_full(err: BaseException) -> bool:
    """Whether `err` (or what it was raised from) is a write that failed for lack of space."""
    import errno

    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(err) for text in _DISK_FULL_TEXT):
            return True
        err = err.__cause__ or err.__context__
    return False


def disk_full_message(path: str, needed: int | None = None) -> str:
    """'no space left on device' with the path, the space free there and (when known) about how much is needed."""
    import os
    import shutil

    where = path
    while where and not os.path.exists(where):
        where = os.path.dirname(where)
    free = shutil.disk_usage(where or ".").free
    need = f"; about {needed / 2**20:,.1f} MiB is needed" if needed else ""
    return f"No space left on device writing {path}: {free / 2**20:,.1f} MiB free there{need}."
