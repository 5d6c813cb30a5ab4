"""The part of every training stage after its trainer is built: train, save, evaluate, report."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import yaml

from lmforge.config.schema import RunConfig
from lmforge.config.secrets import masked
from lmforge.errors import TrainingError
from lmforge.jsonl import atomic_open
from lmforge.runlog import read_log
from lmforge.train.runtime.output_dir import CONFIG_FILE
from lmforge.train.runtime.plots import plot_curves, stage_curves
from lmforge.train.runtime.signals import stopped_message
from lmforge.train.runtime.split_checkpoint import is_split_model
from lmforge.train.runtime.tracking import finish_trackers, log_samples
from lmforge.train.samples import generate_samples, write_samples
from lmforge.train.trainer import LanguageModelTrainer

logger = logging.getLogger(__name__)



def text_tokenizer(processing_class: Any) -> Any:
    """The tokenizer of a Trainer's processing class (a vision-language model's processor holds one)."""
    return getattr(processing_class, "tokenizer", processing_class)


def last_eval(trainer: LanguageModelTrainer) -> dict | None:
    """Metrics of an evaluation already run at the final step (eval_steps dividing max_steps): not run twice."""
    for record in reversed(trainer.state.log_history):
        if "eval_loss" in record and record.get("step") == trainer.state.global_step:
            return {k: v for k, v in record.items() if k.startswith("eval_") or k == "epoch"}
    return None


def run_training(cfg: RunConfig, trainer: LanguageModelTrainer, resume: str | None, chat: bool = False,
                 stop_ids: list[int] | None = None,
                 after_eval: Callable[[LanguageModelTrainer], dict] | None = None) -> dict:
    """Train (resuming from `resume`), save model and state, evaluate, run `after_eval` (e.g. prediction), plot,
    and generate the sample prompts (as chat turns when `chat`). Returns every metric."""
    if trainer.is_world_process_zero():
        save_run_config(cfg)

    result = trainer.train(resume_from_checkpoint=resume)
    if getattr(trainer, "stopped_by", None):
        return stopped_early(trainer)
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

    if after_eval is not None:
        metrics.update(after_eval(trainer))

    if trainer.is_world_process_zero():
        samples = report(cfg, trainer.model, text_tokenizer(trainer.processing_class), chat, stop_ids)
        if samples:
            log_samples(trainer, samples)
        finish_trackers(trainer)
    else:
        join_sample_generation(cfg, trainer.model, text_tokenizer(trainer.processing_class), chat, stop_ids)
    return metrics


def join_sample_generation(cfg: RunConfig, model: Any, tokenizer: Any, chat: bool,
                           stop_ids: list[int] | None) -> None:
    """On the other processes while the first writes its report: a model split over the processes generates the
    samples with all of them (each holds a part of every layer), the same seeds giving the same tokens."""
    if is_split_model(model) and cfg.generation.sample_prompts:
        generate_samples(model, tokenizer, cfg.generation, cfg.training.seed, chat, stop_ids)


def stopped_early(trainer: LanguageModelTrainer) -> dict:
    """After a stop at a step end: the checkpoint just saved is the run's state; say how to go on."""
    checkpoint = os.path.join(trainer.args.output_dir, f"checkpoint-{trainer.state.global_step}")
    if trainer.stopped_by == "non-finite steps":
        raise TrainingError(trainer.guard.message(checkpoint))
    if trainer.is_world_process_zero():
        logger.warning(stopped_message(trainer.stopped_by, trainer.state.global_step, trainer.state.max_steps,
                                       checkpoint))
    return {"stopped_at_step": trainer.state.global_step}


def save_run_config(cfg: RunConfig) -> None:
    with atomic_open(os.path.join(cfg.training.output_dir, CONFIG_FILE)) as fh:
        yaml.safe_dump(masked(cfg.raw), fh, sort_keys=False, allow_unicode=True)


def report(cfg: RunConfig, model: Any, tokenizer: Any, chat: bool = False,
           stop_ids: list[int] | None = None) -> list[dict]:
    """After training (first process): plot the stage's curves, generate the sample prompts; returns the samples."""
    args = cfg.training
    if cfg.finetuning.plot_loss:
        plot_curves(args.output_dir, read_log(args.output_dir), stage_curves(cfg.finetuning.stage))
    samples = []
    if cfg.generation.sample_prompts:
        samples = generate_samples(model, tokenizer, cfg.generation, args.seed, chat, stop_ids)
        path = write_samples(args.output_dir, samples)
        for s in samples:
            logger.info("Sample ▸ %s ▸ %s", s["prompt"], s["completion"])
        logger.info("Samples written to %s", path)
    logger.info("Model and tokenizer saved to %s", args.output_dir)
    return samples
