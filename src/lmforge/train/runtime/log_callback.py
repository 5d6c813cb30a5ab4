"""Trainer callbacks: the run's own log file (lmforge/runlog.py)."""

from __future__ import annotations

import math

from transformers import TrainerCallback

from lmforge.model.moe import ExpertLoads
from lmforge.runlog import append_record, cut_log
from lmforge.train.runtime.console import TokenRate

# Trainer log keys -> names in trainer_log.jsonl
_RENAME = {"learning_rate": "lr"}


class JsonlLogCallback(TrainerCallback):
    """Append one JSON line per log event to `output_dir/trainer_log.jsonl`: step, epoch, loss, lr, grad_norm,
    tokens/s (from the Trainer's token counter), eval loss and perplexity. On resume, lines past the checkpoint's
    step are dropped so the file reads as one continuous run."""

    def __init__(self, output_dir: str, perplexity: bool = True) -> None:
        self.output_dir = output_dir
        self.perplexity = perplexity  # a language-modelling loss (pt, sft), not a preference or reward loss
        self.rate = TokenRate()

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        cut_log(self.output_dir, state.global_step)
        self.rate.start(state.num_input_tokens_seen)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch}
        for key, value in logs.items():
            record[_RENAME.get(key, key)] = value
        if "loss" in logs:
            rate = self.rate.since_last(state.num_input_tokens_seen)
            if rate is not None:
                record["tokens_per_second"] = rate
        if self.perplexity and "eval_loss" in logs and "eval_perplexity" not in logs:
            record["eval_perplexity"] = perplexity(logs["eval_loss"])
        loads = ExpertLoads.of(kwargs.get("model"))
        if loads is not None and loads.last and "loss" in logs:  # each layer's share of tokens per expert
            record["expert_load"] = loads.last
        append_record(self.output_dir, record)


def perplexity(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")
