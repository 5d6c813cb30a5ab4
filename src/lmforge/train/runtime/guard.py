"""Numerical guard: steps whose loss or gradient is NaN/inf are skipped and counted; too many in a row stop the run."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class NonfiniteGuard:
    """Counts skipped steps; `exhausted` once `max_in_a_row` consecutive steps were non-finite."""

    def __init__(self, max_in_a_row: int) -> None:
        self.max_in_a_row = max_in_a_row
        self.total = 0
        self.in_a_row = 0
        self.last_good_step = 0

    def record(self, finite: bool, step: int) -> None:
        if finite:
            self.in_a_row, self.last_good_step = 0, step
            return
        self.total += 1
        self.in_a_row += 1
        logger.warning("Step %d: non-finite loss or gradient; step skipped (weights and optimizer state unchanged; "
                       "%d in a row, %d in this run).", step, self.in_a_row, self.total)

    @property
    def exhausted(self) -> bool:
        return self.in_a_row >= self.max_in_a_row

    def message(self, checkpoint: str) -> str:
        return (f"Training error: {self.in_a_row} steps in a row had a non-finite (NaN/inf) loss or gradient "
                f"(max_nonfinite_steps={self.max_in_a_row}); the run stopped. {checkpoint} holds the weights and "
                f"optimizer state from step {self.last_good_step}, before the problem. Lower the learning rate, "
                "check the data around these steps, or use bf16 instead of fp16, then resume with "
                "resume_from_checkpoint.")
