"""Experiment trackers: check `report_to` up front, attach SwanLab's official callback, log generated samples, and
drive the same callbacks from a loop of our own (PPO/GRPO)."""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.integrations import get_reporting_integration_callbacks
from transformers.trainer_callback import CallbackHandler

from lmforge.config.tracking import TrackingArguments
from lmforge.errors import ConfigError
from lmforge.train.runtime.memory_probe import MemoryProbe

logger = logging.getLogger(__name__)

# report_to name -> (modules any of which provides it, pip extra)
TRACKERS = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
    "swanlab": (("swanlab",), "swanlab"),
    "mlflow": (("mlflow",), "mlflow"),
}


def requested_trackers(args: TrainingArguments) -> list[str]:
    report_to = args.report_to or []
    if isinstance(report_to, str):
        report_to = [report_to]
    return [r for name in report_to for r in str(name).split(",") if r.strip() and r != "none"]


def transformers_trackers(args: TrainingArguments) -> list[str]:
    """The trackers transformers' own integrations feed (SwanLab goes through its own callback instead)."""
    return [t for t in requested_trackers(args) if t != "swanlab"]


def check_trackers(args: TrainingArguments) -> None:
    """A tracker named in report_to whose package is missing is a config error with an install hint."""
    for name in requested_trackers(args):
        if name == "all" or name not in TRACKERS:
            continue
        modules, extra = TRACKERS[name]
        if not any(importlib.util.find_spec(m) for m in modules):
            raise ConfigError(f"Config error: report_to includes '{name}', but the {modules[0]} package is not "
                              f"installed. Install it with: pip install 'lmforge[{extra}]' (or pip install "
                              f"{modules[0]}).")


def tracking_callbacks(args: TrainingArguments, tracking: TrackingArguments) -> list[TrainerCallback]:
    """SwanLab goes through its own SwanLabCallback (with mode/logdir honoured), not transformers' copy of it; the
    memory probe where `memory_report` asks for it."""
    probe = [MemoryProbe(args.output_dir)] if tracking.memory_report else []
    if "swanlab" not in requested_trackers(args):
        return probe
    try:
        from swanlab.integration.transformers import SwanLabCallback
    except ImportError:  # swanlab < 0.6 named the module after the hub
        from swanlab.integration.huggingface import SwanLabCallback
    logdir = tracking.swanlab_logdir or os.path.join(args.output_dir, "swanlog")
    return [*probe, SwanLabCallback(project=tracking.swanlab_project, workspace=tracking.swanlab_workspace,
                                    experiment_name=tracking.swanlab_run_name or args.run_name,
                                    mode=tracking.swanlab_mode, logdir=logdir)]


def log_samples(callbacks: list[TrainerCallback], step: int, samples: list[dict]) -> None:
    """Send generated samples to every active tracker (the run's tracker callbacks) as text/table."""
    text = "\n\n".join(f"**{s['prompt']}**{s['completion']}" for s in samples)
    for callback in callbacks:
        name = type(callback).__name__
        try:
            if name == "TensorBoardCallback" and getattr(callback, "tb_writer", None) is not None:
                callback.tb_writer.add_text("samples", text, step)
                callback.tb_writer.flush()
            elif name == "WandbCallback" and getattr(callback, "_wandb", None) is not None and callback._wandb.run:
                table = callback._wandb.Table(columns=["prompt", "completion"],
                                              data=[[s["prompt"], s["completion"]] for s in samples])
                callback._wandb.log({"samples": table})
            elif name == "SwanLabCallback":
                import swanlab

                swanlab.log({"samples": [swanlab.Text(s["prompt"] + s["completion"]) for s in samples]})
            elif name == "MLflowCallback" and getattr(callback, "_ml_flow", None) is not None:
                callback._ml_flow.log_text(text, "samples.md")
        except Exception as err:  # noqa: BLE001 - a tracker failing to take text must not fail a finished run
            logger.warning("Could not log samples to %s: %s", name, err)


def finish_trackers(callbacks: list[TrainerCallback]) -> None:
    """End SwanLab's run once samples are logged: it writes its records in the background and would otherwise only
    flush them when the process exits (an in-process caller, such as a notebook, would read an empty log)."""
    if any(type(c).__name__ == "SwanLabCallback" for c in callbacks):
        import swanlab

        swanlab.finish()


class LoopTrackers:
    """The trackers of `report_to` (transformers' integration callbacks, SwanLab's own), fed by a training loop
    that is not a Trainer: the same events, so the same dashboards (`train/reward`, `eval/reward`, ...)."""

    def __init__(self, args: TrainingArguments, tracking: TrackingArguments, model: Any, tokenizer: Any,
                 optimizer: Any, scheduler: Any):
        swanlab = tracking_callbacks(args, tracking)
        callbacks = [cls() for cls in get_reporting_integration_callbacks(transformers_trackers(args))] + swanlab
        self.args = args
        flow = logging.getLogger("transformers.trainer_callback")
        level = flow.level
        flow.setLevel(logging.ERROR)  # it warns that a Trainer needs its DefaultFlowCallback: this loop is not one
        try:
            self.callback_handler = CallbackHandler(callbacks, model, tokenizer, optimizer, scheduler)
        finally:
            flow.setLevel(level)
        self.state = TrainerState(max_steps=args.max_steps, logging_steps=args.logging_steps)
        self.control = TrainerControl()

    @property
    def callbacks(self) -> list[TrainerCallback]:
        return self.callback_handler.callbacks

    def begin(self, step: int) -> None:
        self.state.global_step = step
        self.callback_handler.on_train_begin(self.args, self.state, self.control)

    def step_begin(self, step: int) -> None:
        """A step starts (the memory probe traces the first ones)."""
        self.state.global_step = step
        self.callback_handler.on_step_begin(self.args, self.state, self.control)

    def step_end(self, step: int) -> None:
        self.state.global_step = step
        self.callback_handler.on_step_end(self.args, self.state, self.control)

    def track_memory_of(self, *modules: Any) -> None:
        """Models a step uses beside the trained one (a reference, a value head), for the memory probe."""
        for probe in (c for c in self.callbacks if isinstance(c, MemoryProbe)):
            probe.also_track(*modules)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.state.global_step = step
        self.state.log_history.append({**values, "step": step})
        self.callback_handler.on_log(self.args, self.state, self.control, values)

    def end(self) -> None:
        self.callback_handler.on_train_end(self.args, self.state, self.control)
