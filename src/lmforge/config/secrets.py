"""Secrets never reach disk: keys whose names end in token, key, secret, password or auth are written as `***`
wherever lmforge writes a config (the run's lmforge_config.yaml, the web UI's saved config, checkpoints).

A process that needs the real values gets them from the environment: `$LMFORGE_SECRETS` holds a JSON mapping of
secret keys (the web UI starts its training runs that way); a `***` read back from a saved config counts as unset."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from lmforge.errors import ConfigError

logger = logging.getLogger(__name__)

MASK = "***"
SECRETS_ENV = "LMFORGE_SECRETS"
_SUFFIXES = ("token", "key", "secret", "password", "auth")


def is_secret(name: str) -> bool:
    return name.lower().endswith(_SUFFIXES)


def masked(values: Any) -> Any:
    """`values` with every secret key's value (at any depth) replaced by `***`."""
    if isinstance(values, dict):
        return {k: (MASK if isinstance(k, str) and is_secret(k) and v not in (None, "") else masked(v))
                for k, v in values.items()}
    if isinstance(values, list):
        return [masked(v) for v in values]
    return values


def secret_values(values: dict[str, Any]) -> dict[str, Any]:
    """The top-level secret keys of `values` that hold a real value (to hand to a child through $LMFORGE_SECRETS)."""
    return {k: v for k, v in values.items() if is_secret(k) and v not in (None, "", MASK)}


def environment_secrets() -> dict[str, Any]:
    """Secret keys from `$LMFORGE_SECRETS` (a JSON mapping); anything but secret keys there is an error."""
    text = os.environ.get(SECRETS_ENV)
    if not text:
        return {}
    try:
        values = json.loads(text)
    except json.JSONDecodeError:
        values = None
    if not isinstance(values, dict) or not all(isinstance(k, str) and is_secret(k) for k in values):
        raise ConfigError(f"Config error: ${SECRETS_ENV} must be a JSON mapping of secret keys (names ending in "
                          f"{', '.join(_SUFFIXES)}).")
    return values


def drop_masked(raw: dict[str, Any]) -> dict[str, Any]:
    """A `***` read back from a saved config is no secret: the key counts as unset (with a warning)."""
    out = dict(raw)
    for key, value in raw.items():
        if is_secret(key) and value == MASK:
            logger.warning("'%s' is '%s' (a masked copy of a config): treated as unset; give it on the command line "
                           "or through $%s.", key, MASK, SECRETS_ENV)
            del out[key]
    return out


def masked_argv(argv: list[str]) -> list[str]:
    """The command line with secret values (`hub_token=...`, `--hub_token ...`) replaced by `***`: trackers record
    the command line in their run metadata."""
    out, hide_next = [], False
    for arg in argv:
        if hide_next:
            out.append(MASK)
            hide_next = False
            continue
        key, eq, _ = arg.partition("=")
        name = key.lstrip("-")
        if is_secret(name) and eq:
            out.append(f"{key}={MASK}")
        else:
            hide_next = arg.startswith("--") and is_secret(name) and not eq
            out.append(arg)
    return out
