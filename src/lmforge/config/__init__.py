"""Typed config: dataclasses per concept, YAML + `key=value` parsing, validation.

The package's names are imported when first used (PEP 562), so a module that needs only part of the config (the
stage registry for `lmforge --help`) does not import `schema`, which reads transformers' TrainingArguments."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmforge.config.parse import build_config, load_config, parse_overrides
    from lmforge.config.schema import RunConfig

__all__ = ["RunConfig", "build_config", "load_config", "parse_overrides"]
_HOMES = {"RunConfig": "lmforge.config.schema", "build_config": "lmforge.config.parse",
          "load_config": "lmforge.config.parse", "parse_overrides": "lmforge.config.parse"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'lmforge.config' has no attribute '{name}'")
