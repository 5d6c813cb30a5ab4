"""Trainer callbacks: the run's own log file."""

from __future__ import annotations

import json
import math
import os
import time

from transformers import TrainerCallback

from lmforge.jsonl import atomic_open

LOG_FILE = "trainer_log.jsonl"

# Trainer log keys -> names in trainer_log.jsonl
_RENAME = {"learning_rate": "lr"}


def read_log(output_dir: str) -> list[dict]:
    path = os.path.join(output_dir, LOG_FILE)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as fh:
        lines = [line for line in fh if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise
            # the last line of a run killed while writing it; a resumed run rewrites the file without it
    return records


class JsonlLogCallback(TrainerCallback):
    """Append one JSON line per log event to `output_dir/trainer_log.jsonl`: step, epoch, loss, lr, grad_norm,
    tokens/s (from the Trainer's token counter), eval loss and perplexity. On resume, lines past the checkpoint's
    step are dropped so the file reads as one continuous run."""

    def __init__(self, output_dir: str, perplexity: bool = True) -> None:
        self.path = os.path.join(output_dir, LOG_FILE)
        self.perplexity = perplexity  # a language-modelling loss (pt, sft), not a preference or reward loss
        self._last_time = 0.0
        self._last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        kept = [r for r in read_log(os.path.dirname(self.path)) if r.get("step", 0) <= state.global_step]
        with atomic_open(self.path) as fh:  # a kill here must not lose the log of the run so far
            fh.writelines(json.dumps(r) + "\n" for r in kept)
        self._last_time = time.perf_counter()
        self._last_tokens = state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch}
        for key, value in logs.items():
            record[_RENAME.get(key, key)] = value
        if "loss" in logs:
            now, tokens = time.perf_counter(), state.num_input_tokens_seen
            elapsed = now - self._last_time
            if elapsed > 0 and tokens > self._last_tokens:
                record["tokens_per_second"] = round((tokens - self._last_tokens) / elapsed, 1)
            self._last_time, self._last_tokens = now, tokens
        if self.perplexity and "eval_loss" in logs and "eval_perplexity" not in logs:
            record["eval_perplexity"] = perplexity(logs["eval_loss"])
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def perplexity(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")
