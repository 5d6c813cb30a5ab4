"""Typed config: dataclasses per concept, YAML + `key=value` parsing, validation."""

from lmforge.config.parse import build_config, load_config, parse_overrides
from lmforge.config.schema import RunConfig

__all__ = ["RunConfig", "build_config", "load_config", "parse_overrides"]
