"""JSON-lines files written atomically: the file appears only when complete (never half-written)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable


def write_jsonl(path: str, rows: Iterable[dict]) -> int:
    """Write `rows` to `path` as JSON lines via a temporary file renamed into place; returns the row count."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".jsonl", dir=directory)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return count
