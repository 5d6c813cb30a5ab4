"""Find the exact line/record/field that made a data file fail to load, so the error can name it."""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator
from typing import IO

from lmforge.errors import DataError
from lmforge.jsonl import json_lines

# The deepest JSON nesting a record may have. Real records nest a handful of levels (a tool call's arguments inside a
# message inside a conversation); pyarrow's JSON reader overflows its stack (the process dies) on records nested
# about 100k deep, and Python's json raises RecursionError near 1000.
MAX_JSON_DEPTH = 256
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string, escapes included
_OPENS, _CLOSES = (ord("["), ord("{")), (ord("]"), ord("}"))


def open_data_file(path: str, mode: str = "rb", **kwargs) -> IO:
    """`open`, with a file that cannot be opened (a symbolic link loop, no permission, a folder) a DataError naming
    it and the reason."""
    try:
        return open(path, mode, **kwargs)
    except OSError as err:
        raise DataError(f"Data error: '{path}' cannot be read: {err.strerror or err}.") from None


def json_depth(data: bytes) -> int:
    """The deepest bracket nesting of JSON text (brackets inside strings do not count). The strings are cut out by
    one regular expression and the brackets counted by numpy, a chunk at a time: a data file of hundreds of MB is
    checked in about a second (a token-by-token loop in Python took seconds per 20 MB)."""
    import numpy as np

    stripped = _JSON_STRING.sub(b"", data)
    depth = deepest = 0
    for start in range(0, len(stripped), 1 << 24):  # bounded memory whatever the file's size
        chunk = np.frombuffer(stripped, np.uint8, count=min(1 << 24, len(stripped) - start), offset=start)
        steps = np.isin(chunk, _OPENS).astype(np.int32) - np.isin(chunk, _CLOSES).astype(np.int32)
        running = np.cumsum(steps) + depth
        if len(running):
            deepest, depth = max(deepest, int(running.max())), int(running[-1])
    return deepest


def _too_deep(data: bytes) -> bool:
    return data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH and json_depth(data) > MAX_JSON_DEPTH


def _utf8_error(path: str, where: str, err: UnicodeDecodeError) -> DataError:
    return DataError(f"Data error: '{path}' {where}: not UTF-8 text (byte {err.start} of it: {err.reason}).")


def check_data_file(path: str, builder: str | None) -> None:
    """Before a data file reaches `datasets`/pyarrow (which crash or raise without a line number on these): a file
    that cannot be opened, text that is not UTF-8, JSON nested too deep are DataErrors naming file and line."""
    if builder == "json":
        return check_json_file(path)
    with open_data_file(path) as fh:
        if builder in ("text", "csv"):
            for _ in _utf8_lines(path, fh):
                pass


def _utf8_lines(path: str, fh: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of a file opened in binary, each checked to be UTF-8."""
    for lineno, line in enumerate(fh, start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise _utf8_error(path, f"line {lineno}", err) from None
        yield lineno, line


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def checked_json_text(path: str) -> str:
    """The text of a .json/.jsonl file, read once, after the checks of `check_json_file` (for readers that parse
    the whole file themselves)."""
    with open_data_file(path) as fh:
        data = fh.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _utf8_error(path, f"line {_line_of(data, err.start)}", err) from None
    if data.lstrip().startswith(b"["):
        if _too_deep(data):
            raise DataError(f"Data error: '{path}': JSON nested deeper than {MAX_JSON_DEPTH} levels.")
        return text
    for lineno, line in enumerate(data.split(b"\n"), start=1):
        if _too_deep(line):
            raise DataError(f"Data error: '{path}' line {lineno}: JSON nested deeper than {MAX_JSON_DEPTH} levels.")
    return text


def check_json_file(path: str) -> None:
    """Raise a DataError naming the line of the first record that must not reach a JSON reader: bytes that are not
    UTF-8, or nesting deeper than MAX_JSON_DEPTH. One pass over the file; a line with few brackets is only counted."""
    with open_data_file(path) as fh:
        if fh.read(4096).lstrip().startswith(b"["):  # one JSON document (an array of records): checked whole
            checked_json_text(path)
            return
        fh.seek(0)
        for lineno, line in _utf8_lines(path, fh):
            if _too_deep(line):
                raise DataError(f"Data error: '{path}' line {lineno}: JSON nested deeper than {MAX_JSON_DEPTH} "
                                f"levels.")


def _check_record(path: str, where: str, record: object, column: str) -> None:
    if not isinstance(record, dict):
        raise DataError(f"Data error: '{path}' {where}: expected a JSON object, got {type(record).__name__}.")
    if column not in record:
        raise DataError(f"Data error: '{path}' {where}: field '{column}' is missing (fields: "
                        f"{', '.join(map(str, record)) or 'none'}).")
    value = record[column]
    if value is not None and not isinstance(value, str):
        raise DataError(f"Data error: '{path}' {where}: field '{column}' must be a string, got "
                        f"{type(value).__name__}.")


def diagnose_json(path: str, column: str) -> None:
    """Raise a DataError at the first bad line/record of a .json or .jsonl file (returns if none is found)."""
    with open(path, encoding="utf-8", errors="strict") as fh:
        text = fh.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"Data error: '{path}' line {err.lineno}, column {err.colno}: invalid JSON "
                            f"({err.msg}).") from None
        for i, record in enumerate(records):
            _check_record(path, f"record {i}", record, column)
        return
    for lineno, line in json_lines(text):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"Data error: '{path}' line {lineno}: invalid JSON ({err.msg} at column "
                            f"{err.colno}).") from None
        _check_record(path, f"line {lineno}", record, column)


def diagnose_csv(path: str, column: str) -> None:
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise DataError(f"Data error: '{path}' is empty (no header row).")
        if column not in header:
            raise DataError(f"Data error: '{path}': no column '{column}' in the header ({', '.join(header)}).")
        for row in reader:
            if len(row) != len(header):
                raise DataError(f"Data error: '{path}' line {reader.line_num}: {len(row)} fields, but the header "
                                f"has {len(header)}.")


def diagnose_file(path: str, builder: str | None, column: str) -> None:
    """Look for the precise cause of a load failure; returns silently if none is found."""
    if not os.path.isfile(path):
        raise DataError(f"Data error: '{path}' does not exist.")
    try:
        if builder == "json":
            diagnose_json(path, column)
        elif builder == "csv":
            diagnose_csv(path, column)
        elif builder == "text":
            with open(path, encoding="utf-8", errors="strict") as fh:
                for _ in fh:
                    pass
    except UnicodeDecodeError as err:
        raise DataError(f"Data error: '{path}' is not UTF-8 text (byte {err.start}: {err.reason}).") from None
