"""What a run shows on the console, the same for every stage: a progress bar over the steps (with the phase of the
step, where a stage's step has phases: rollout, scoring, update) and one compact metrics line per log event.

    [lmforge] step  20/400  loss 0.3077    lr 1.94e-03  grad 0.4309    tok/s 5,005     epoch 3.43

The line holds the headline numbers (loss, learning rate, gradient norm, throughput) and the stage's own metrics,
each in a fixed-width column so that lines stack into a table; trainer_log.jsonl keeps the full record. transformers'
ProgressCallback/PrinterCallback print the raw log dict instead (numbers as strings, over 300 characters a line in
DPO), so a Trainer's are replaced by `MetricsConsole` (`use_metrics_console`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Mapping
from typing import Any

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import PrinterCallback, ProgressCallback

logger = logging.getLogger("lmforge.train")

# (log key, label) of the headline numbers, shown first and in this order where a log event has them
HEADLINE = (("loss", "loss"), ("learning_rate", "lr"), ("lr", "lr"), ("grad_norm", "grad"),
            ("tokens_per_second", "tok/s"))
# keys a console line leaves to trainer_log.jsonl: bookkeeping, timings, and the raw parts of derived metrics
# (DPO's chosen/rejected rewards, log-probabilities and logits make up its margins and accuracies)
HIDDEN_PREFIXES = ("logps/", "logits/", "rewards/chosen", "rewards/rejected", "eval_logps/", "eval_logits/",
                   "eval_rewards/chosen", "eval_rewards/rejected", "expert_load")
HIDDEN_PARTS = ("_runtime", "_per_second", "_seconds", "_std", "total_flos", "num_input_tokens_seen", "num_tokens",
                "_max", "epoch")
SHORT = {"rewards/accuracies": "acc", "rewards/margins": "margin", "eval_rewards/accuracies": "eval_acc",
         "eval_rewards/margins": "eval_margin", "mean_token_accuracy": "token_acc", "clip_fraction": "clip",
         "completion_length": "length", "truncated_fraction": "truncated", "eval_perplexity": "eval_ppl"}
COLUMN = 9  # characters of a value's column: 4 significant digits, a sign and an exponent fit
MAX_STAGE_METRICS = 6  # a line stays within a terminal's width


def format_value(key: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if key == "tokens_per_second":
        return f"{value:,.0f}"
    if key in ("learning_rate", "lr"):
        return f"{value:.2e}"
    if isinstance(value, int) or (math.isfinite(value) and value == int(value) and abs(value) < 1e6):
        return f"{int(value)}"
    return f"{value:.4g}"


def shown(key: str, value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and not key.startswith(HIDDEN_PREFIXES) and not any(part in key for part in HIDDEN_PARTS))


def metrics_line(step: int, max_steps: int, values: Mapping[str, Any]) -> str:
    """`step N/M` and the log event's metrics, headline first, each label and value in a fixed-width column."""
    head = f"step {step:>{len(str(max_steps))}}/{max_steps}"
    headline = {key for key, _ in HEADLINE}
    fields = [(label, format_value(key, values[key])) for key, label in HEADLINE if key in values]
    stage = [(SHORT.get(key, key), format_value(key, value)) for key, value in values.items()
             if key not in headline and shown(key, value)]
    fields += stage[:MAX_STAGE_METRICS]
    if "epoch" in values and isinstance(values["epoch"], int | float):
        fields.append(("epoch", f"{values['epoch']:.2f}"))
    return "  ".join([head, *(f"{label} {text:<{COLUMN}}" for label, text in fields)]).rstrip()


class TokenRate:
    """Tokens per second between two log events, from a running count of tokens seen."""

    def __init__(self) -> None:
        self.time, self.tokens = time.perf_counter(), 0

    def start(self, tokens: int) -> None:
        self.time, self.tokens = time.perf_counter(), tokens

    def since_last(self, tokens: int) -> float | None:
        now = time.perf_counter()
        elapsed, seen = now - self.time, tokens - self.tokens
        self.time, self.tokens = now, tokens
        return round(seen / elapsed, 1) if elapsed > 0 and seen > 0 else None


class MetricsConsole(ProgressCallback):
    """transformers' progress bar (unless `disable_tqdm`), with `metrics_line` for each log event instead of the
    raw dict; on the main process only, like the callbacks it replaces."""

    def __init__(self, bar: bool = True) -> None:
        super().__init__()
        self.bar = bar
        self.rate = TokenRate()

    def on_train_begin(self, args, state, control, **kwargs):
        if self.bar:
            super().on_train_begin(args, state, control, **kwargs)
        self.rate.start(state.num_input_tokens_seen)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar:
            super().on_step_end(args, state, control, **kwargs)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if self.bar:
            super().on_prediction_step(args, state, control, eval_dataloader, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        values = dict(logs)
        if "loss" in values:
            rate = self.rate.since_last(state.num_input_tokens_seen)
            if rate is not None:
                values["tokens_per_second"] = rate
        logger.info(metrics_line(state.global_step, state.max_steps, values))

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar and self.training_bar is not None:
            super().on_train_end(args, state, control, **kwargs)


def use_metrics_console(trainer: Any) -> None:
    """Swap a Trainer's progress/printer callback for `MetricsConsole` (bar or not, as `disable_tqdm` says)."""
    for callback in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(callback)
    trainer.add_callback(MetricsConsole(bar=not trainer.args.disable_tqdm))


@contextlib.contextmanager
def lines_above_the_bar() -> Iterator[None]:
    """lmforge's log lines printed above an active progress bar (through tqdm), not through it."""
    with logging_redirect_tqdm(loggers=[logging.getLogger("lmforge")]):
        yield


class StepProgress:
    """A loop's bar over its steps, for loops that are not a Trainer (the RL stages): the step count, the ETA and
    the phase of the step under way."""

    def __init__(self, total: int, initial: int, enabled: bool, stage: str) -> None:
        self.bar = tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, desc=stage,
                        unit="step")

    def phase(self, name: str) -> None:
        self.bar.set_postfix_str(name, refresh=True)

    def advance(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
