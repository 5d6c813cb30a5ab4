"""transformers' LOAD REPORT, read instead of printed where it describes lmforge's own setup.

Loading a causal LM's checkpoint into a reward model, a classifier or a process reward model leaves the new head
(`score.weight`, `classifier.*`) missing from the checkpoint, and transformers prints a warning table ("score.weight
MISSING ... Consider training on your downstream task") about the head the stage is about to train. That case gets
one lmforge line instead; any other finding (a missing backbone weight, an unexpected or mismatched key) is printed as
transformers wrote it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)
REPORTER = "transformers.modeling_utils"  # the logger transformers writes the report to


class HeldReport(logging.Filter):
    """Holds back the LOAD REPORT record, to be let through (`release`) or replaced."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in str(record.msg):
            self.records.append(record)
            return False
        return True

    def release(self) -> None:
        for record in self.records:
            logging.getLogger(REPORTER).handle(record)
        self.records.clear()


@contextlib.contextmanager
def held_load_report() -> Iterator[HeldReport]:
    held = HeldReport()
    reporter = logging.getLogger(REPORTER)
    reporter.addFilter(held)
    try:
        yield held
    except BaseException:
        reporter.removeFilter(held)
        held.release()  # the load failed: the report holds the details its error points to
        raise
    reporter.removeFilter(held)


def new_head_keys(model: Any, info: dict[str, Any]) -> list[str]:
    """The missing keys when all of them lie in the task head the model class puts on the backbone (outside its
    `base_model_prefix`), the only unexpected keys are the checkpoint's own head (its `lm_head`, which a classifier
    does not have) and nothing else was found; else [] (the report then says what went wrong)."""
    missing, unexpected = list(info.get("missing_keys") or []), list(info.get("unexpected_keys") or [])
    if not missing or info.get("mismatched_keys") or info.get("error_msgs"):
        return []
    backbone = f"{getattr(model, 'base_model_prefix', '') or '-'}."
    return [] if any(key.startswith(backbone) for key in missing + unexpected) else sorted(missing)


def report_new_head(model: Any, info: dict[str, Any], held: HeldReport) -> None:
    """One line for a new task head; transformers' own report for anything else."""
    head = new_head_keys(model, info)
    if not head:
        held.release()
        return
    held.records.clear()
    parameters = dict(model.named_parameters())
    size = sum(parameters[key].numel() for key in head if key in parameters)
    unused = sorted({key.rsplit(".", 1)[0] for key in info.get("unexpected_keys") or []})
    logger.info("New head %s (%s parameters): initialised at random, trained by this stage%s",
                ", ".join(sorted({key.rsplit(".", 1)[0] for key in head})), f"{size:,}",
                f" (the checkpoint's {', '.join(unused)} is not used)" if unused else "")
