"""Experiment trackers beyond `report_to` (SwanLab is attached through its official callback)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lmforge.config.fields import option


@dataclass
class TrackingArguments:
    swanlab_project: str = option("lmforge", "SwanLab project name (used when `report_to` includes swanlab).")
    swanlab_workspace: str | None = option(None, "SwanLab workspace (organisation); your own when unset.")
    swanlab_run_name: str | None = option(None, "SwanLab experiment name; defaults to `run_name`.")
    swanlab_mode: Literal["cloud", "local", "offline", "disabled"] = option(
        "cloud", "SwanLab mode: `cloud`, `local` (no upload, local dashboard), `offline`, or `disabled`."
    )
    swanlab_logdir: str | None = option(None, "Folder for SwanLab's local logs (default: `output_dir`/swanlog).")
    memory_report: bool = option(
        False, "Trace the first two steps (ppo/grpo: rollouts and updates) with torch's MemTracker and write "
        "`memory_report.json`: the peak memory by kind (parameters, gradients, optimizer state, activations, "
        "temporaries), the figures `lmforge plan` predicts. Slows those two steps.",
        stages=("pt", "sft", "dpo", "kto", "rm", "prm", "kd", "cls", "ppo", "grpo", "online_dpo"))
