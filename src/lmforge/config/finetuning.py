"""What kind of training a run does and what it reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lmforge.config.fields import option


@dataclass
class FinetuningArguments:
    stage: Literal["pt"] = option("pt", "Training stage: `pt` (pretraining / continued pretraining).")
    finetuning_type: Literal["full"] = option("full", "Which parameters are trained: `full` (all of them).")
    plot_loss: bool = option(False, "Save PNG plots of the train and eval loss in `output_dir`.")
