"""What a run does when a step goes numerically wrong, and where it may write."""

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
    overwrite_output_dir: bool = option(
        False, "Start a new run in an output_dir that holds an earlier run, removing only what an lmforge run wrote "
        "there (checkpoints, logs, model and tokenizer files, plots); other files stay. Without it such a start is "
        "refused unless `resume_from_checkpoint` continues the earlier run.")
