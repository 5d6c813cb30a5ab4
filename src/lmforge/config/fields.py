"""`option()`: a dataclass field that carries its help text, so docs and `--help` come from one place."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


def option(default: Any = dataclasses.MISSING, help: str | Callable[[], str] = "", *,
           default_factory: Any = dataclasses.MISSING, choices: Callable[[], tuple[str, ...]] | None = None,
           stages: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with help text in its metadata (the key's single source of truth). `help` may be a
    function (text read from a registry when shown); `choices` a function giving the allowed values (read when a
    config is checked, so values registered later count); `stages` the stages the key applies to (unset: all)."""
    metadata = {"help": help, "lmforge_choices": choices, "stages": stages}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)
