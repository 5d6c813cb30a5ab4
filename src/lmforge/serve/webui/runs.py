"""Every training run under a folder, from the files each one writes (its config, run log, status record,
checkpoints, samples, metrics, and the evaluations and exports written beside it): whoever started it, the command
line or the web UI, and whether or not the page that started it is still open."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import yaml

from lmforge.config.schema import RUN_CONFIG_FILE
from lmforge.runlog import LOG_FILE, read_log
from lmforge.runstatus import (
    EVAL_RESULTS_FILE,
    RUN_LOG_FILE,
    SAMPLES_FILE,
    STATUS_FILE,
    final_model_written,
    is_complete,
    published_checkpoints,
    read_status,
)

RUN_MARKERS = (RUN_CONFIG_FILE, LOG_FILE, STATUS_FILE)  # a folder holding one of these is a run
SCAN_DEPTH = 4  # runs are found this many folders deep (LLaMA-Factory's saves/MODEL/TYPE/RUN is 3)
UI_COMMAND_LOG = "webui_command.log"  # the output of a run the web UI started


@dataclass
class Run:
    """One run's summary, as the Runs table lists it."""

    path: str
    status: str  # running, finished, stopped, failed
    stage: str = ""
    model: str = ""
    dataset: str = ""
    step: int = 0
    max_steps: int | None = None
    final_loss: float | None = None
    started: float | None = None
    ended: float | None = None
    error: str = ""
    checkpoints: list[int] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        if self.status == "running":
            return time.time() - self.started
        return self.ended - self.started if self.ended else None

    @property
    def resumable(self) -> bool:
        return self.status in ("stopped", "failed") and bool(self.checkpoints)


def _config(path: str) -> dict[str, Any]:
    try:
        with open(os.path.join(path, RUN_CONFIG_FILE), encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def complete_checkpoints(path: str) -> list[int]:
    """The steps a run can resume from (what `resume_from_checkpoint: true` chooses among)."""
    return [step for step, folder in published_checkpoints(path) if is_complete(folder)]


def _inferred_status(path: str, checkpoints: list[int]) -> str:
    """A run from before status records: finished when its final model is there, else stopped (resumable) or
    failed."""
    if final_model_written(path):
        return "finished"
    return "stopped" if checkpoints else "failed"


@lru_cache(maxsize=256)
def _log_summary(path: str, size: int, mtime: float) -> tuple[int, float | None]:
    """(last step, last loss) of a run log, read once per version of the file (the Runs table is refreshed every few
    seconds; a log of a long run has many thousand lines)."""
    records = read_log(path, while_written=True)
    losses = [r["loss"] for r in records if "loss" in r]
    return max((r["step"] for r in records if "step" in r), default=0), losses[-1] if losses else None


def log_summary(path: str) -> tuple[int, float | None]:
    try:
        stat = os.stat(os.path.join(path, LOG_FILE))
    except OSError:
        return 0, None
    return _log_summary(path, stat.st_size, stat.st_mtime)


def read_run(path: str) -> Run:
    """A run's summary; a folder that cannot be read is a failed run saying why (one bad folder never hides the
    others)."""
    try:
        return _read_run(path)
    except (OSError, ValueError) as err:
        return Run(path, "failed", error=f"cannot be read: {err}")


def _read_run(path: str) -> Run:
    status = read_status(path)
    config = _config(path)
    step, final_loss = log_summary(path)
    checkpoints = complete_checkpoints(path)
    try:
        with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as fh:
            max_steps = json.load(fh).get("max_steps")
    except (OSError, ValueError):
        max_steps = config.get("max_steps") if isinstance(config.get("max_steps"), int) and config["max_steps"] > 0 \
            else None
    return Run(
        path=path,
        status=status.get("status") or _inferred_status(path, checkpoints),
        stage=str(status.get("stage") or config.get("stage") or ""),
        model=str(status.get("model") or config.get("model_name_or_path") or
                  (f"{config.get('model_type', '')} (from_scratch)" if config.get("from_scratch") else "")),
        dataset=str(status.get("dataset") or config.get("dataset") or ""),
        step=step, max_steps=max_steps, final_loss=final_loss,
        started=status.get("started") or (os.path.getmtime(os.path.join(path, RUN_CONFIG_FILE))
                                          if os.path.isfile(os.path.join(path, RUN_CONFIG_FILE)) else None),
        ended=status.get("ended"), error=str(status.get("error") or ""), checkpoints=checkpoints, config=config)


def find_runs(root: str, also: list[str] = ()) -> list[Run]:
    """Every run under `root` (newest first), and the folders in `also` that hold one (runs the page started
    elsewhere)."""
    found: list[str] = []
    if root and os.path.isdir(root):
        base = root.rstrip(os.sep).count(os.sep)
        for folder, dirs, files in os.walk(root):
            if any(name in files for name in RUN_MARKERS):
                found.append(folder)
                dirs[:] = []  # a run's checkpoints and exports are not runs of their own
            elif folder.count(os.sep) - base >= SCAN_DEPTH:
                dirs[:] = []
            else:
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for path in also:
        if path and any(os.path.isfile(os.path.join(path, n)) for n in RUN_MARKERS) and \
                os.path.realpath(path) not in {os.path.realpath(p) for p in found}:
            found.append(path)
    runs = [read_run(p) for p in found]
    return sorted(runs, key=lambda r: r.started or 0, reverse=True)


# ---- one run's page ---------------------------------------------------------------------------------------------

def run_log_text(path: str, lines: int = 200) -> str:
    """The run's own log (train.log, written by every run), else what the web UI captured of its output."""
    for name in (RUN_LOG_FILE, UI_COMMAND_LOG):
        full = os.path.join(path, name)
        if os.path.isfile(full):
            with open(full, encoding="utf-8", errors="replace") as fh:
                return "".join(fh.readlines()[-lines:])
    return ""


def samples(path: str) -> list[dict[str, Any]]:
    try:
        with open(os.path.join(path, SAMPLES_FILE), encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except (OSError, ValueError):
        return []


def final_metrics(path: str, records: list[dict]) -> dict[str, Any]:
    """all_results.json (train and eval metrics of a finished Trainer run), else the last of the run's records."""
    try:
        with open(os.path.join(path, "all_results.json"), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return dict(records[-1]) if records else {}


def evaluations(path: str) -> list[dict[str, Any]]:
    """The `lmforge eval` results in the run's subfolders (the web UI's Evaluate tab puts them there): where, the
    task, and its scores. One level deep: the table reads this for every run every few seconds."""
    found = []
    for name in sorted(os.listdir(path)) if os.path.isdir(path) else []:
        folder = os.path.join(path, name)
        if os.path.isfile(os.path.join(folder, EVAL_RESULTS_FILE)):
            try:
                with open(os.path.join(folder, EVAL_RESULTS_FILE), encoding="utf-8") as fh:
                    result = json.load(fh)
            except (OSError, ValueError):
                continue
            if not isinstance(result, dict):
                continue
            scores = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                      and k not in ("seconds", "questions")}
            found.append({"where": os.path.relpath(folder, path), "task": str(result.get("task", "")),
                          "scores": scores})
    return sorted(found, key=lambda e: e["where"])


HEADLINE_SCORES = ("average", "accuracy", "perplexity", "exact_match", "rougeL", "f1")  # what a task is known by


def headline(evaluation: dict[str, Any]) -> str:
    """One evaluation in a few characters: its task and main score (`cmmlu 41.20`, `perplexity 12.31`)."""
    scores = evaluation["scores"]
    key = next((k for k in HEADLINE_SCORES if k in scores), next(iter(scores), None))
    if key is None:
        return evaluation["task"]
    shown = evaluation["task"] if key in ("average", evaluation["task"]) else f"{evaluation['task']} {key}"
    return f"{shown} {scores[key]:.4g}"


EXPORT_SUFFIX = "-export"  # a run's exports go beside it (`lmforge export` refuses a folder inside its model)


def export_dir_for(path: str) -> str:
    return os.path.normpath(path) + EXPORT_SUFFIX


def exported_files(path: str) -> list[tuple[str, int]]:
    """Files of the run's exports (the folders beside it named RUN-export*): path relative to the runs' parent
    folder, and size."""
    path = os.path.normpath(path)
    parent, run = os.path.split(path)
    files = []
    for name in sorted(os.listdir(parent)) if os.path.isdir(parent) else []:
        folder = os.path.join(parent, name)
        if name.startswith(run + EXPORT_SUFFIX) and os.path.isdir(folder):
            for root, _, names in os.walk(folder):
                files += [(os.path.relpath(os.path.join(root, n), parent), _size(os.path.join(root, n)))
                          for n in sorted(names)]
    return files


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:  # a link that leads nowhere
        return 0


CURVE_KEYS = ("loss", "eval_loss", "grad_norm", "reward", "accuracy", "eval_accuracy", "kl")  # on one scale-ish


def curves(records: list[dict], keys: tuple[str, ...] = CURVE_KEYS) -> list[dict[str, Any]]:
    """Long-format rows (step, metric, value) of the numeric curves a run logged."""
    rows = []
    for record in records:
        for key in keys:
            value = record.get(key)
            if "step" in record and isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append({"step": record["step"], "metric": key, "value": float(value)})
    return rows


def logged_metrics(records: list[dict]) -> list[str]:
    """The numeric metrics a run logged with a step (what the comparison can overlay)."""
    seen: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                seen.setdefault(key)
    return list(seen)


def overlay(paths: list[str], metric: str, names: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Rows (step, value, run) of one metric for several runs, to draw on one plot."""
    rows = []
    for path in paths:
        for record in read_log(path, while_written=True):
            value = record.get(metric)
            if "step" in record and isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append({"step": record["step"], "value": float(value), "run": (names or {}).get(path, path)})
    return rows


def run_name(path: str, root: str) -> str:
    """How the table names a run: its path under the root (or as given, outside it)."""
    try:
        relative = os.path.relpath(path, root)
    except ValueError:
        return path
    return path if relative.startswith("..") else relative
