"""What a run does when a step goes numerically wrong."""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.config.fields import option


@dataclass
class ResilienceArguments:
    skip_nonfinite_steps: bool = option(
        True, "A step whose loss or gradient is NaN or inf is skipped (the weights and optimizer state are not "
        "updated) and counted in trainer_log.jsonl (`nonfinite_steps`). Off under fp16 and DeepSpeed, whose loss "
        "scalers skip overflowing steps themselves.")
    max_nonfinite_steps: int = option(
        10, "Stop the run after this many non-finite steps in a row, saving a checkpoint whose weights are those "
        "from before the problem.")
