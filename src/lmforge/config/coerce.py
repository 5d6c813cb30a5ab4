"""Turn YAML / command-line values into the type a config field declares, or say clearly why not."""

from __future__ import annotations

import difflib
import enum
import json
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from lmforge.errors import ConfigError

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class _Mismatch(Exception):
    pass


def type_name(tp: Any) -> str:
    """A short human name for a field type, used in messages and docs."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        if any(isinstance(a, type) and issubclass(a, enum.Enum) for a in members):
            members = [a for a in members if a is not str]  # `Enum | str` accepts only the enum's values
        return " or ".join(type_name(a) for a in members)
    if origin is Literal:
        # sorted: typing caches a Literal by its set of values, so a library's same Literal imported first (with
        # its own order) would otherwise decide the order shown
        return "one of " + ", ".join(sorted(repr(a) for a in get_args(tp)))
    if origin in (list, typing.List):  # noqa: UP006
        args = get_args(tp)
        return f"list of {type_name(args[0])}" if args else "list"
    if origin in (dict, typing.Dict):  # noqa: UP006
        return "mapping"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    return getattr(tp, "__name__", str(tp))


def _number(value: Any, tp: type) -> int | float:
    """Numbers and numeric strings; a whole float is a valid int (`1e3` in YAML), a bool is never a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _Mismatch
    if isinstance(value, str):
        try:
            value = float(value) if tp is float or any(c in value for c in ".eE") else int(value)
        except ValueError:
            raise _Mismatch from None
    if tp is int and isinstance(value, float):
        if not value.is_integer():
            raise _Mismatch
        return int(value)
    return tp(value)


def _coerce(value: Any, tp: Any) -> Any:
    if isinstance(value, bool) and choices(tp):
        # YAML 1.1 reads a bare `no` / `yes` as a boolean: `save_strategy: no` means the choice "no".
        spelled = [w for w in (("no", "false") if not value else ("yes", "true")) if w in choices(tp)]
        if spelled:
            return spelled[0]
    origin = get_origin(tp)
    if tp is Any or tp is typing.Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _Mismatch
        members = [a for a in args if a is not type(None)]
        enums = [a for a in members if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and isinstance(value, str):
            # `SchedulerType | str` style fields: transformers only accepts the enum's values.
            for e in enums:
                if value in {m.value for m in e}:
                    return value
            raise _Mismatch
        # Prefer a member whose type matches exactly (so 3 stays int in `int | str`).
        for a in members:
            if isinstance(a, type) and type(value) is a:
                return value
        for a in members:
            try:
                return _coerce(value, a)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise _Mismatch
    if origin in (list, tuple):
        (item_tp, *_) = get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, item_tp) for v in value]
    if origin is dict or tp is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise _Mismatch from None
        if isinstance(value, dict):
            return value
        raise _Mismatch
    if value is None:
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise _Mismatch
    if tp in (int, float):
        return _number(value, tp)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _Mismatch
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value).value if isinstance(value, str) else tp(value)
        except ValueError:
            raise _Mismatch from None
    return value  # a type we do not know how to check: let its owner validate it


def choices(tp: Any) -> list[str]:
    """The allowed string values of a Literal / Enum field (empty for free-form types)."""
    origin = get_origin(tp)
    if origin is Literal:
        return [str(a) for a in get_args(tp)]
    if origin in (Union, types.UnionType):
        return [c for a in get_args(tp) for c in choices(a)]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return [str(m.value) for m in tp]
    return []


def coerce(key: str, value: Any, tp: Any, where: str) -> Any:
    """Convert `value` to `tp` or raise a ConfigError naming the key, the expected type and where it came from."""
    try:
        return _coerce(value, tp)
    except _Mismatch:
        hint = ""
        close = difflib.get_close_matches(str(value), choices(tp), n=1, cutoff=0.5)
        if close:
            hint = f" Did you mean '{close[0]}'?"
        raise ConfigError(
            f"Config error ({where}): '{key}' expects {type_name(tp)}, but got {value!r} "
            f"({type(value).__name__}).{hint}"
        ) from None
