"""What every stage after pretraining assembles first: the chat tokenizer, its examples, the policy model, and the
Trainer arguments they share (sft, rm, dpo, kto)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import set_seed

from lmforge.config.schema import RunConfig
from lmforge.model.adapters import apply_finetuning_type
from lmforge.model.build import build_model
from lmforge.train.runtime.log_callback import JsonlLogCallback
from lmforge.train.runtime.tracking import check_trackers, tracking_callbacks
from lmforge.train.setup import parallel_split, set_precision, trainer_arguments
from lmforge.train.stage_data import ChatStage, chat_examples


def prepare_chat_stage(cfg: RunConfig, resume: str | None = None) -> ChatStage:
    """Trackers checked, seed set, tokenizer and the stage's examples built (by the first process under torchrun)."""
    check_trackers(cfg.training)
    set_seed(cfg.training.seed)
    return chat_examples(cfg, resume)


def policy_model(cfg: RunConfig, stage: ChatStage) -> torch.nn.Module:
    """The model to train, with the trainable parameters `finetuning_type` selects; generation stops where training
    taught the model to end its turn (in samples, chat, api and evaluation)."""
    model = build_model(cfg.model, stage.tokenizer, split=parallel_split(cfg))
    model.generation_config.eos_token_id = stage.stop_ids
    model.generation_config.pad_token_id = stage.tokenizer.pad_token_id
    model = apply_finetuning_type(model, cfg.finetuning, stage.added_tokens, cfg.model.adapter_name_or_path)
    set_precision(model, cfg)
    return model


def trainer_kwargs(cfg: RunConfig, stage: ChatStage) -> dict[str, Any]:
    """Arguments every stage's Trainer takes."""
    # a vision-language collator reads the image references: the Trainer must keep the columns it does not know
    keep_columns = {"remove_unused_columns": False} if stage.processor is not None else {}
    return {"args": trainer_arguments(cfg, **keep_columns), "processing_class": stage.processor or stage.tokenizer,
            "eval_dataset": stage.eval_rows(),
            "resilience": cfg.resilience, "save_dtype": cfg.finetuning.save_dtype,
            "callbacks": [JsonlLogCallback(cfg.training.output_dir, perplexity=stage.kind == "sft"),
                          *tracking_callbacks(cfg.training, cfg.tracking)]}
