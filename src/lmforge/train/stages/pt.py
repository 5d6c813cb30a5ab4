"""Stage `pt`: pretraining from scratch or continued pretraining on raw text."""

from __future__ import annotations

from transformers import set_seed

from lmforge.config.schema import RunConfig
from lmforge.data.collate import PretrainCollator
from lmforge.model.adapters import apply_finetuning_type
from lmforge.model.build import build_model
from lmforge.train.runtime.log_callback import JsonlLogCallback
from lmforge.train.runtime.tracking import check_trackers, tracking_callbacks
from lmforge.train.setup import parallel_split, set_precision, trainer_arguments
from lmforge.train.stage_data import pretrain_inputs
from lmforge.train.trainer import LanguageModelTrainer


def build_trainer(cfg: RunConfig, resume: str | None = None) -> LanguageModelTrainer:
    """Tokenizer, data, model and Trainer for a pt run (shared with `lmforge bench`)."""
    args = trainer_arguments(cfg)
    check_trackers(cfg.training)
    set_seed(args.seed)
    tokenizer, data = pretrain_inputs(cfg, resume)
    model = apply_finetuning_type(build_model(cfg.model, tokenizer, split=parallel_split(cfg)), cfg.finetuning,
                                  adapter=cfg.model.adapter_name_or_path)
    set_precision(model, cfg)
    return LanguageModelTrainer(
        model=model, args=args, train_dataset=data.train, eval_dataset=data.eval, data_collator=PretrainCollator(),
        processing_class=tokenizer, loraplus_lr_ratio=cfg.finetuning.loraplus_lr_ratio,
        optimizer_settings=cfg.finetuning, resilience=cfg.resilience, save_dtype=cfg.finetuning.save_dtype,
        chunked_loss=cfg.finetuning.chunked_loss,
        callbacks=[JsonlLogCallback(args.output_dir), *tracking_callbacks(cfg.training, cfg.tracking)])
