"""Files and directories written atomically: they appear only when complete (never half-written); JSON Lines read
as JSON Lines."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import orjson

from lmforge.errors import DataError


def json_text(value: Any) -> str:
    """`json.dumps(value, ensure_ascii=False)`'s data, by orjson where it can (about ten times faster), by the json
    module where orjson refuses (integers beyond 64 bits). Text holding a lone surrogate raises UnicodeEncodeError,
    as encoding json's output to UTF-8 would."""
    try:
        return orjson.dumps(value).decode("utf-8")
    except orjson.JSONEncodeError:
        text = json.dumps(value, ensure_ascii=False)
        text.encode("utf-8")  # a lone surrogate: UnicodeEncodeError, naming it
        return text


def with_default_mode(path: str, directory: bool = False) -> None:
    """Give a file (folder) made by mkstemp (mkdtemp), which are private to their owner (0600, 0700), the mode open
    (mkdir) would have given it: a cache, model or report written atomically stays readable by the others who may
    read it (another user of a shared cache, a server running as another user)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


@contextmanager
def atomic_open(path: str, suffix: str = "", binary: bool = False) -> Iterator[IO]:
    """A file handle (text, UTF-8; or binary) whose contents replace `path` only when the block completes without
    error."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")) as fh:
            yield fh
        with_default_mode(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: str, replace: bool = False) -> Iterator[str]:
    """A staging directory beside `path` that is renamed to `path` only when the block completes without error.
    With `replace`, an existing `path` is removed just before the rename."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(os.path.abspath(path))}-", dir=parent)
    try:
        yield staging
        if os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)
        if os.path.exists(path):
            if not replace:
                raise FileExistsError(f"'{path}' appeared while it was being written")
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
        with_default_mode(staging, directory=True)
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)


def write_jsonl(path: str, rows: Iterable[dict]) -> int:
    """Write `rows` to `path` as JSON lines (UTF-8, not ASCII-escaped), atomically, streamed; returns the row count.
    orjson encodes about ten times faster than the json module: a dump of tokenized data is mostly integers."""
    count = 0
    with atomic_open(path, ".jsonl", binary=True) as fh:
        for row in rows:
            fh.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY))
            count += 1
    return count


def write_json(path: str, value: Any) -> None:
    """Write `value` to `path` as indented JSON, atomically (values JSON cannot hold are written as text)."""
    with atomic_open(path, ".json") as fh:
        json.dump(value, fh, indent=2, ensure_ascii=False, default=str)
        fh.write("\n")


def read_json_mapping(path: str, what: str) -> dict[str, Any]:
    """A JSON file holding one object (`what` it maps, for the error message); {} when the file does not exist."""
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh)
    except json.JSONDecodeError as err:
        raise DataError(f"Data error: '{path}' is not valid JSON (line {err.lineno}, column {err.colno}: "
                        f"{err.msg}).") from None
    if not isinstance(value, dict):
        raise DataError(f"Data error: '{path}' must map {what}, not hold a {type(value).__name__}.")
    return value


def json_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of JSON Lines text, split on `\n` only: U+2028, U+2029, U+0085 and other characters that
    `str.splitlines` breaks at are legal inside JSON strings (and then line numbers would drift)."""
    for lineno, line in enumerate(text.split("\n"), start=1):
        yield lineno, line.removesuffix("\r")
