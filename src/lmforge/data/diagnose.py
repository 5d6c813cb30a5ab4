"""Find the exact line/record/field that made a data file fail to load, so the error can name it."""

from __future__ import annotations

import csv
import json
import os

from lmforge.errors import DataError
from lmforge.jsonl import json_lines


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
