"""Every `transformers.TrainingArguments` field (name, type, default, help) without importing transformers.

Importing `TrainingArguments` costs seconds (it imports torch, accelerate and, through peft's constants, modeling
code), and `lmforge --help`, `help config` and every config error come before anything needs it. So the field list is
stored in `trainer_fields.json`, written from the installed class by `python -m lmforge.config.trainer_fields` (a
test checks it equals the installed transformers' fields). Another installed transformers release reads its own
fields once (importing it) and keeps them in lmforge's cache, so keys a newer release adds are config keys at once.

The fields become a plain dataclass, `TrainingFields`: config parsing, validation and `help` use it; the run builds
the real `TrainingArguments` from the same values when it starts (`parse.trainer_arguments`)."""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib.metadata
import json
import os
import types
import typing
from typing import Any, Literal

from lmforge.config.data import cache_home
from lmforge.jsonl import write_json

MIRROR = os.path.join(os.path.dirname(__file__), "trainer_fields.json")
_SIMPLE = {"bool": bool, "int": int, "float": float, "str": str, "NoneType": type(None), "Any": Any,
           "dict": dict, "list": list}


# -- the installed class -> JSON ------------------------------------------------------------------------------------

def _type_spec(tp: Any, enums: dict[str, list[list[str]]]) -> Any:
    """A field type as JSON: a simple type's name, or [kind, ...] for unions, lists, mappings, literals, enums and
    the classes we only name (transformers and accelerate objects a YAML file cannot spell)."""
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "NoneType"
    if tp is Any:
        return "Any"
    if origin in (typing.Union, types.UnionType):
        return ["union", [_type_spec(a, enums) for a in typing.get_args(tp)]]
    if origin is Literal:
        return ["literal", list(typing.get_args(tp))]
    if origin in (list, dict):
        return [origin.__name__, [_type_spec(a, enums) for a in typing.get_args(tp)]]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        enums[tp.__name__] = [[m.name, m.value] for m in tp]
        return ["enum", tp.__name__]
    if isinstance(tp, type) and tp.__name__ in _SIMPLE:
        return tp.__name__
    return ["opaque", getattr(tp, "__name__", str(tp))]


def _json_default(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_json_default(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_default(v) for k, v in value.items()}
    return value


def describe(cls: type) -> dict[str, Any]:
    """The init fields of a TrainingArguments class as JSON (what `trainer_fields.json` holds)."""
    hints = typing.get_type_hints(cls)
    enums: dict[str, list[list[str]]] = {}
    fields = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        if f.default_factory is not dataclasses.MISSING:
            default, factory = f.default_factory(), True
        else:
            default, factory = (None if f.default is dataclasses.MISSING else f.default), False
        help_text = f.metadata.get("help", "")
        fields.append({"name": f.name, "type": _type_spec(hints.get(f.name, f.type), enums),
                       "default": _json_default(default), "factory": factory,
                       "help": help_text if isinstance(help_text, str) else ""})
    return {"transformers": importlib.metadata.version("transformers"), "enums": enums, "fields": fields}


# -- JSON -> a dataclass --------------------------------------------------------------------------------------------

def _type(spec: Any, enums: dict[str, type], opaque: dict[str, type]) -> Any:
    if isinstance(spec, str):
        return _SIMPLE[spec]
    kind, arg = spec
    if kind == "union":
        return functools.reduce(lambda a, b: typing.Union[a, b], [_type(a, enums, opaque) for a in arg])  # noqa: UP007
    if kind == "literal":
        return Literal[tuple(arg)]
    if kind in ("list", "dict"):
        base = list if kind == "list" else dict
        return base[tuple(_type(a, enums, opaque) for a in arg)] if arg else base
    if kind == "enum":
        return enums[arg]
    return opaque.setdefault(arg, type(arg, (), {"__module__": "transformers"}))


def _enum(name: str, members: list[list[Any]]) -> type:
    """An enum with the members (name, value) of transformers' own: a str enum where every value is a string, as
    theirs are, so that values compare equal to the strings a config holds."""
    pairs = [(member, value) for member, value in members]
    if all(isinstance(value, str) for _, value in pairs):
        return enum.Enum(name, pairs, type=str)
    return enum.Enum(name, pairs)


def fields_class(described: dict[str, Any]) -> type:
    """`TrainingFields`: a dataclass with the described fields, types, defaults and help."""
    enums = {name: _enum(name, members) for name, members in described["enums"].items()}
    opaque: dict[str, type] = {}
    spec = []
    for f in described["fields"]:
        default = f["default"]
        metadata = {"help": f["help"]}
        if f["factory"] or isinstance(default, (list, dict)):
            field = dataclasses.field(default_factory=functools.partial(_copy, default), metadata=metadata)
        else:
            field = dataclasses.field(default=default, metadata=metadata)
        spec.append((f["name"], _type(f["type"], enums, opaque), field))
    cls = dataclasses.make_dataclass("TrainingFields", spec)
    cls.__doc__ = (f"transformers {described['transformers']}'s TrainingArguments fields, as values only: the run "
                   "builds the real TrainingArguments from them.")
    return cls


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


def installed_version() -> str | None:
    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None


def _read(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def described_fields() -> dict[str, Any]:
    """The installed transformers' TrainingArguments fields as JSON: from the stored mirror when it was written from
    this release, else from lmforge's cache, else read from the class itself (and cached: only the first command
    after an upgrade of transformers pays for importing it)."""
    version = installed_version()
    described = _read(MIRROR)
    if described is not None and described["transformers"] == version:
        return described
    cached = os.path.join(cache_home(), "trainer_fields", f"transformers-{version}.json")
    described = _read(cached)
    if described is not None and described["transformers"] == version:
        return described
    from transformers import TrainingArguments

    described = describe(TrainingArguments)
    try:
        write_json(cached, described)  # atomically: another process reading the cache never sees half a file
    except OSError:
        pass  # a read-only home: read from the class again next time
    return described


@functools.cache
def training_fields() -> type:
    """`TrainingFields`: the installed transformers' TrainingArguments fields as a dataclass."""
    return fields_class(described_fields())


if __name__ == "__main__":  # python -m lmforge.config.trainer_fields: rewrite the mirror from the installed class
    from transformers import TrainingArguments

    write_json(MIRROR, describe(TrainingArguments))
    print(f"wrote {MIRROR} (transformers {installed_version()})")
