"""What a training run says about itself in `output_dir/run_status.json`, and its own log in `output_dir/train.log`:
written by the process that speaks for the run (`lmforge train`, whoever started it), read by the web UI's Runs tab
and anyone listing runs. A run that vanished without a word (SIGKILL, a lost machine) still says `running`; readers
see that its process is gone and report it as failed.

Also the one home of the names of a run's files that readers outside `train/` need (its checkpoints, samples and
the evaluations written beside it)."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from typing import Any, Literal

from lmforge.jsonl import atomic_open

STATUS_FILE = "run_status.json"
RUN_LOG_FILE = "train.log"
SAMPLES_FILE = "samples.jsonl"  # the sample prompts' completions after training
EVAL_RESULTS_FILE = "results.json"  # what `lmforge eval` writes into its output_dir
CHECKPOINT_PREFIX = "checkpoint"  # transformers' PREFIX_CHECKPOINT_DIR (a test holds them equal)
COMPLETE_MARKER = "trainer_state.json"  # the Trainer writes it last; a checkpoint without it is incomplete
_CHECKPOINT = re.compile(rf"^{CHECKPOINT_PREFIX}-(\d+)$")
Status = Literal["running", "finished", "stopped", "failed"]


def write_status(output_dir: str, status: Status, **fields: Any) -> None:
    """Record `status` (and `fields`) over what was recorded before (start time, command), whole or not at all."""
    record = {**read_status_file(output_dir), **fields, "status": status}
    if status == "running":
        record.update(pid=os.getpid(), host=socket.gethostname(), started=time.time())
        record.pop("ended", None)
        record.pop("error", None)
    else:
        record["ended"] = time.time()
    with atomic_open(os.path.join(output_dir, STATUS_FILE)) as fh:
        json.dump(record, fh, indent=1)


def read_status_file(output_dir: str) -> dict[str, Any]:
    """The record as written (empty when there is none or it cannot be read)."""
    try:
        with open(os.path.join(output_dir, STATUS_FILE), encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def process_alive(pid: int, host: str | None) -> bool:
    """Whether the process `pid` still runs (on this machine; a run on another host is taken at its word)."""
    if host and host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:  # a finished child of a process that has not waited for it yet is not running
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def is_lmforge_process(pid: int) -> bool:
    """Whether `pid` is an lmforge process (so a signal meant for a run never reaches a process that got its PID
    after it ended)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"lmforge" in fh.read()
    except OSError:
        return False


def read_status(output_dir: str) -> dict[str, Any]:
    """The record, with a `running` run whose process is gone turned into `failed` (and why)."""
    record = read_status_file(output_dir)
    if record.get("status") == "running" and not process_alive(int(record.get("pid", 0)), record.get("host")):
        record.update(status="failed", error="the process ended without finishing (killed, or its machine lost)")
    return record


def log_to_file(output_dir: str) -> logging.Handler:
    """lmforge's messages also go to `output_dir/train.log` (appended: a resumed run continues it)."""
    handler = logging.FileHandler(os.path.join(output_dir, RUN_LOG_FILE), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logging.getLogger("lmforge").addHandler(handler)
    return handler


FINAL_MODEL_FILES = ("config.json", "adapter_config.json")  # what saving the final model writes into output_dir


def final_model_written(output_dir: str) -> bool:
    """Whether this run (since its recorded start) saved its final model into output_dir."""
    started = float(read_status_file(output_dir).get("started", 0))
    paths = [os.path.join(output_dir, name) for name in FINAL_MODEL_FILES]
    return any(os.path.isfile(p) and os.path.getmtime(p) >= started for p in paths)


def checkpoint_step(path: str) -> int | None:
    match = _CHECKPOINT.match(os.path.basename(os.path.normpath(path)))
    return int(match.group(1)) if match else None


def is_complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, COMPLETE_MARKER))


def published_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the checkpoint folders in output_dir, oldest first (complete or not: see `is_complete`)."""
    try:
        names = os.listdir(output_dir)
    except OSError:
        return []
    return sorted((step, os.path.join(output_dir, name)) for name in names
                  if (step := checkpoint_step(name)) is not None and os.path.isdir(os.path.join(output_dir, name)))
