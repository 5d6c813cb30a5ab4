"""Stage `prm`: a process reward model, trained to judge each step of a reply (TRL's stepwise supervision).

The examples are a prompt and the reply's steps, each labelled correct or not (`data/steps.py`): the prompt is
rendered with the chat template, every step is followed by `step_separator`, and the step's label sits on the
separator's last token. The model is the backbone with a two-class token-classification head
(`AutoModelForTokenClassification`: incorrect/correct), trained with transformers' Trainer on the head's own
cross-entropy over the labelled positions only. TRL 1.x no longer ships a PRM trainer; the model, the loss and the
collator are transformers' own, so only the encoding is lmforge's.

Logged: `step_accuracy` (labelled steps judged right) and `error_f1` (F1 of finding the incorrect steps, the PRM's
job when it guides a search or an RL run). The separator is saved beside the weights (`prm.json`), so `lmforge score`
and `reward_model` in grpo/ppo split and score completions as training did.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from transformers import DataCollatorForTokenClassification, EvalPrediction

from lmforge.config.schema import RunConfig
from lmforge.data.template import IGNORE_INDEX
from lmforge.jsonl import write_json
from lmforge.model.adapters import apply_finetuning_type
from lmforge.model.build import PRM_FILE, STEP_HEAD, build_model
from lmforge.train.setup import set_precision
from lmforge.train.shared_setup import prepare_chat_stage, trainer_kwargs
from lmforge.train.trainer import LoraPlusTrainer


def step_predictions(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each position's predicted class (what the metrics need: a token per position instead of the logits)."""
    return logits.argmax(-1)


def step_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """Accuracy over the labelled steps, and the F1 of predicting "incorrect" (0) for the incorrect ones."""
    predicted, labels = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
    marked = labels != IGNORE_INDEX
    predicted, labels = predicted[marked], labels[marked]
    found = int(((predicted == 0) & (labels == 0)).sum())
    flagged, wrong = int((predicted == 0).sum()), int((labels == 0).sum())
    f1 = 2 * found / (flagged + wrong) if flagged + wrong else 1.0
    return {"step_accuracy": float((predicted == labels).mean()) if labels.size else 0.0, "error_f1": f1}


def build_trainer(cfg: RunConfig, resume: str | None = None) -> LoraPlusTrainer:
    stage = prepare_chat_stage(cfg, resume)
    model = build_model(cfg.model, stage.tokenizer, step_head=True)
    model = apply_finetuning_type(model, cfg.finetuning, stage.added_tokens, cfg.model.adapter_name_or_path)
    set_precision(model, cfg)
    return LoraPlusTrainer(
        model=model, train_dataset=stage.data.train.select_columns(["input_ids", "labels"]),
        data_collator=DataCollatorForTokenClassification(stage.tokenizer), compute_metrics=step_metrics,
        preprocess_logits_for_metrics=step_predictions, loraplus_lr_ratio=cfg.finetuning.loraplus_lr_ratio,
        optimizer_settings=cfg.finetuning, **trainer_kwargs(cfg, stage))


def before_training(cfg: RunConfig, trainer: Any) -> None:
    """The step separator and the head beside the weights (an adapter's base lacks the head)."""
    if trainer.is_world_process_zero():
        os.makedirs(cfg.training.output_dir, exist_ok=True)
        write_json(os.path.join(cfg.training.output_dir, PRM_FILE),
                   {"step_separator": cfg.data.step_separator, "enable_thinking": cfg.data.enable_thinking,
                    **STEP_HEAD})
