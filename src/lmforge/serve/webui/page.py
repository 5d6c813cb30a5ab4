"""What every tab of the web UI shares: the language and runs-folder controls, the translatable components, the
jobs the page started, and the pickers built from what exists on disk."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from lmforge.serve.webui.catalog import model_info
from lmforge.serve.webui.i18n import Localized, tr
from lmforge.serve.webui.jobs import Job
from lmforge.serve.webui.runs import Run, find_runs, run_name

DEFAULT_RUNS_DIR = "saves"  # LLaMA-Factory's folder for runs; the page's runs folder starts here


@dataclass
class Page:
    loc: Localized
    jobs: dict[str, Job | None]
    lang: Any = None  # the language picker (an input of every handler that writes a message)
    runs_dir: Any = None  # the runs folder (an input of every handler that lists runs)
    tabs: Any = None
    train_form: dict[str, Any] = field(default_factory=dict)  # key -> component, for "copy into the Train form"
    train_extra: Any = None
    # (handler, inputs, outputs) run when the page opens (after its language is set) and when the language changes
    on_load: list[tuple[Any, list, list]] = field(default_factory=list)
    on_language: list[tuple[Any, list, list]] = field(default_factory=list)

    def started_elsewhere(self) -> list[str]:
        """Output folders of the runs this server started (they may lie outside the runs folder)."""
        return [job.output_dir for job in self.jobs.values() if job is not None and job.output_dir]


def new_run_dir(runs_dir: str) -> str:
    """A fresh output folder under the runs folder, named by the time (as LLaMA-Factory names its runs)."""
    return os.path.join(runs_dir or DEFAULT_RUNS_DIR, time.strftime("run-%Y%m%d-%H%M%S"))


def model_choices(runs_dir: str, also: list[str] = ()) -> list[tuple[str, str]]:
    """(label, path) of every run under the runs folder whose model or adapter is saved: what it is and its base."""
    choices = []
    for run in find_runs(runs_dir, also):
        info = model_info(run.path)
        if not info.kind:
            continue
        kind = f"LoRA on {os.path.basename(info.base.rstrip(os.sep)) or '?'}" if info.kind == "adapter" else \
            (info.model_type or "model")
        choices.append((f"{run_name(run.path, runs_dir)} · {run.stage or '?'} · {kind}", run.path))
    return choices


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def status_text(lang: str, run: Run) -> str:
    return tr(lang, f"status.{run.status}")


def job_state(lang: str, job: Job) -> str:
    """A child process's state in the page's language: running, finished, failed (exit N), not started."""
    state = job.status()
    word, _, rest = state.partition(" (")
    return tr(lang, f"status.{word.replace(' ', '_')}") + (f" ({rest}" if rest else "")
