"""The run log, `output_dir/trainer_log.jsonl`: one JSON line per logged step or evaluation, written by the Trainer
stages' callback and the PPO/GRPO loop, read by plots, the web UI and tests. One home for its file name, for
appending, for cutting it back to a resumed step, and for reading it while it is written or after a kill."""

from __future__ import annotations

import json
import os
from typing import Any

from lmforge.jsonl import atomic_open

LOG_FILE = "trainer_log.jsonl"


def log_path(output_dir: str) -> str:
    return os.path.join(output_dir, LOG_FILE)


def read_log(output_dir: str, while_written: bool = False) -> list[dict]:
    """Every record. A last line cut by a kill is skipped (a resumed run rewrites the file without it); with
    `while_written`, reading stops at the first incomplete line (one being appended right now)."""
    path = log_path(output_dir)
    if not output_dir or not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as fh:
        lines = [line for line in fh if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if while_written or number == len(lines):
                break
            raise
    return records


def append_record(output_dir: str, record: dict[str, Any]) -> None:
    with open(log_path(output_dir), "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def cut_log(output_dir: str, step: int) -> None:
    """Keep the records up to `step` (where a resumed run continues), rewritten atomically: a kill here must not
    lose the log of the run so far."""
    os.makedirs(output_dir, exist_ok=True)
    kept = [r for r in read_log(output_dir) if r.get("step", 0) <= step] if step else []
    with atomic_open(log_path(output_dir)) as fh:
        fh.writelines(json.dumps(r) + "\n" for r in kept)
