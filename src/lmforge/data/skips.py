"""The exception every per-record check raises: the record is skipped and counted with this reason."""

from __future__ import annotations


class SkipRecord(ValueError):
    """This record cannot be a training conversation; the message says why."""
