"""`memory_report: true`: the first optimizer steps traced by torch's MemTracker (lmforge.model.memory), their peak
written to `memory_report.json` by kind. It is the measured side of `lmforge plan`, which traces the same step
over fake tensors; on a GPU the allocator's own peak (`max_memory_allocated`) is recorded beside it."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch
from transformers import TrainerCallback

from lmforge.model.memory import StepMemory, peak_memory, peak_tracker

logger = logging.getLogger(__name__)

REPORT_FILE = "memory_report.json"
PROBED_STEPS = 2  # the first step creates the optimizer state; the second starts with it


class MemoryProbe(TrainerCallback):
    def __init__(self, output_dir: str) -> None:
        self.output_dir = output_dir
        self.tracker: Any = None
        self.peak = StepMemory()
        self.steps = 0
        self.others: list[torch.nn.Module] = []

    def also_track(self, *modules: torch.nn.Module | None) -> None:
        """Models the step uses beside the trained one, counted whole (kd's teacher only runs its decoder as a
        module; its output layer is read as a weight)."""
        self.others = [m for m in modules if m is not None]

    def on_step_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                      **kwargs: Any) -> None:
        if self.steps >= PROBED_STEPS:
            return
        if self.tracker is None:
            self.tracker = peak_tracker()
            self.tracker.track_external(model, *([optimizer] if optimizer is not None else []), *self.others)
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
        self.tracker.__enter__()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.tracker is None or self.steps >= PROBED_STEPS:
            return
        self.tracker.__exit__(None, None, None)
        self.steps += 1
        step_peak = peak_memory(self.tracker)
        if step_peak.total > self.peak.total:
            self.peak = step_peak
        if self.steps == PROBED_STEPS and args.should_save:
            self.write()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if 0 < self.steps < PROBED_STEPS and args.should_save:  # a run of one step
            self.write()

    def write(self) -> None:
        report = {"steps": self.steps, "peak_bytes": self.peak.as_dict(),
                  "device": "cuda" if torch.cuda.is_available() else "cpu"}
        if torch.cuda.is_available():
            report["max_memory_allocated"] = torch.cuda.max_memory_allocated()
        path = os.path.join(self.output_dir, REPORT_FILE)
        os.makedirs(self.output_dir, exist_ok=True)
        with open(path + ".tmp", "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
        os.replace(path + ".tmp", path)
        logger.info("Memory of the first %d steps: peak %.1f MiB (parameters %.1f, gradients %.1f, optimizer "
                    "state %.1f, activations %.1f, temporaries %.1f) -> %s", self.steps, self.peak.total / 2**20,
                    self.peak.parameters / 2**20, self.peak.gradients / 2**20, self.peak.optimizer_state / 2**20,
                    self.peak.activations / 2**20, self.peak.temporaries / 2**20, REPORT_FILE)
