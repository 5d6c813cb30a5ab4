"""Stage `pt`: pretraining from scratch or continued pretraining on raw text."""

from __future__ import annotations

import logging
import os

import yaml
from transformers import set_seed

from lmforge.config.schema import RunConfig
from lmforge.data.collate import PretrainCollator
from lmforge.data.pretrain import build_pretrain_data
from lmforge.model.build import build_model
from lmforge.train.callbacks import JsonlLogCallback, read_log
from lmforge.train.checkpoint import resolve_resume
from lmforge.train.plots import plot_curves
from lmforge.train.samples import generate_samples, write_samples
from lmforge.train.setup import setup_tokenizer
from lmforge.train.tracking import check_trackers, log_samples, tracking_callbacks
from lmforge.train.trainer import LanguageModelTrainer

logger = logging.getLogger(__name__)

CONFIG_FILE = "lmforge_config.yaml"


def build_trainer(cfg: RunConfig, resume: str | None = None) -> LanguageModelTrainer:
    """Tokenizer, data, model and Trainer for a pt run (shared with `lmforge bench`)."""
    args = cfg.training
    check_trackers(args)
    set_seed(args.seed)
    # Under torchrun the first process trains the tokenizer and fills the cache; the others then read it.
    with args.main_process_first(desc="preparing tokenizer and pretraining data"):
        tokenizer = setup_tokenizer(cfg, resume)
        data = build_pretrain_data(cfg.data, tokenizer, args.seed)
    model = build_model(cfg.model, tokenizer)
    return LanguageModelTrainer(
        model=model, args=args, train_dataset=data.train, eval_dataset=data.eval, data_collator=PretrainCollator(),
        processing_class=tokenizer,
        callbacks=[JsonlLogCallback(args.output_dir), *tracking_callbacks(args, cfg.tracking)])


def last_eval(trainer: LanguageModelTrainer) -> dict | None:
    """Metrics of an evaluation already run at the final step (eval_steps dividing max_steps): not run twice."""
    for record in reversed(trainer.state.log_history):
        if "eval_loss" in record and record.get("step") == trainer.state.global_step:
            return {k: v for k, v in record.items() if k.startswith("eval_") or k == "epoch"}
    return None


def run_pt(cfg: RunConfig) -> dict:
    args = cfg.training
    resume = resolve_resume(args.output_dir, args.resume_from_checkpoint)
    trainer = build_trainer(cfg, resume)
    if trainer.is_world_process_zero():
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, CONFIG_FILE), "w", encoding="utf-8") as fh:
            yaml.safe_dump(cfg.raw, fh, sort_keys=False, allow_unicode=True)

    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    trainer.save_state()
    metrics = dict(result.metrics)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)

    if trainer.eval_dataset is not None:
        eval_metrics = last_eval(trainer) or trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)

    if trainer.is_world_process_zero():
        if cfg.finetuning.plot_loss:
            plot_curves(args.output_dir, read_log(args.output_dir))
        if cfg.generation.sample_prompts:
            samples = generate_samples(trainer.model, trainer.processing_class, cfg.generation, args.seed)
            path = write_samples(args.output_dir, samples)
            for s in samples:
                logger.info("Sample ▸ %s%s", s["prompt"], s["completion"])
            logger.info("Samples written to %s", path)
            log_samples(trainer, samples)
        logger.info("Model and tokenizer saved to %s", args.output_dir)
    return metrics
