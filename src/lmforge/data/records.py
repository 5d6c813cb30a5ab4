"""Read conversation sources as plain Python records.

Conversation data is nested and irregular (tool-call arguments differ per record, content is sometimes a string and
sometimes a list of parts). Loading JSON through Arrow would unify every record's structs (adding `None` keys to
tool arguments) or fail on the first type mismatch, so JSON files are parsed with `json` and every malformed
record reaches the per-record checks, which skip and count it.
"""

from __future__ import annotations

import json
from typing import Any

from datasets import Dataset

from lmforge.data.diagnose import checked_json_text
from lmforge.data.loading import load_raw
from lmforge.data.registry import SourceSpec
from lmforge.errors import DataError
from lmforge.jsonl import json_lines


def _json_lines(path: str, text: str) -> list[Any]:
    records = []
    for lineno, line in json_lines(text):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"Data error: '{path}' line {lineno}: not valid JSON ({err.msg}, column "
                                f"{err.colno}).") from None
            except RecursionError:
                raise DataError(f"Data error: '{path}' line {lineno}: JSON nested too deeply to read.") from None
    return records


def _read_json_file(path: str) -> list[Any]:
    text = checked_json_text(path)  # bytes that are not UTF-8 and deep nesting: named by line before any parsing
    if path.lower().endswith(".jsonl"):
        return _json_lines(path, text)
    try:
        data = json.loads(text)
    except RecursionError:
        raise DataError(f"Data error: '{path}': JSON nested too deeply to read.") from None
    except json.JSONDecodeError as err:
        if text.lstrip().startswith("{") and err.msg == "Extra data":  # a .json file holding JSON lines
            return _json_lines(path, text)
        raise DataError(f"Data error: '{path}' line {err.lineno}, column {err.colno}: not valid JSON "
                        f"({err.msg}).") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise DataError(f"Data error: '{path}' must hold a list of records, not a {type(data).__name__}.")
    return data


def read_records(spec: SourceSpec) -> list[Any]:
    """Every record of a source, in file order."""
    if spec.kind == "file" and spec.builder == "json":
        return [record for path in spec.files for record in _read_json_file(path)]
    ds = load_raw(spec, streaming=False)
    assert isinstance(ds, Dataset)
    return ds.to_list()
