"""Stage `rm`: a reward model trained on chosen/rejected pairs (TRL's RewardTrainer on lmforge's encoded pairs).

The model is the backbone with a one-output sequence-classification head, saved as a plain transformers directory:
`AutoModelForSequenceClassification.from_pretrained(output_dir)` scores a rendered conversation at its last token.
The loss is the pairwise -log sigmoid(r_chosen - r_rejected); accuracy and margin are logged.
"""

from __future__ import annotations

import dataclasses

from datasets import Dataset
from transformers import TrainingArguments
from trl import RewardConfig

from lmforge.config.schema import RunConfig
from lmforge.model.adapters import apply_finetuning_type
from lmforge.model.build import build_model
from lmforge.train.setup import set_precision
from lmforge.train.shared_setup import prepare_chat_stage, trainer_kwargs
from lmforge.train.trainer import RewardModelTrainer


def reward_config(args: TrainingArguments) -> RewardConfig:
    """The run's TrainingArguments as TRL's RewardConfig (a subclass). The pairs are already truncated to
    `cutoff_len`, so TRL's own length filter is off."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingArguments)
              if f.init and not f.name.startswith("_")}
    return RewardConfig(**values, max_length=None, disable_dropout=False)


def reward_rows(pairs: Dataset | None) -> Dataset | None:
    """Our pair columns under TRL's names for processed reward data (labels are not used by a reward model)."""
    if pairs is None:
        return None
    return pairs.select_columns(["chosen_input_ids", "rejected_input_ids"]).rename_columns(
        {"chosen_input_ids": "chosen_ids", "rejected_input_ids": "rejected_ids"})


def build_trainer(cfg: RunConfig, resume: str | None = None) -> RewardModelTrainer:
    stage = prepare_chat_stage(cfg, resume)
    model = build_model(cfg.model, stage.tokenizer, reward_head=True)
    model = apply_finetuning_type(model, cfg.finetuning, stage.added_tokens, cfg.model.adapter_name_or_path)
    set_precision(model, cfg)
    kwargs = trainer_kwargs(cfg, stage)
    kwargs.update(args=reward_config(kwargs["args"]), eval_dataset=reward_rows(stage.data.eval))
    return RewardModelTrainer(model=model, train_dataset=reward_rows(stage.data.train), **kwargs)
