"""The part of every training stage after its trainer is built: train, save, evaluate, report."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from lmforge.config.schema import RunConfig
from lmforge.errors import TrainingError
from lmforge.train.runtime.checkpoint import resolve_resume
from lmforge.train.runtime.console import lines_above_the_bar, use_metrics_console
from lmforge.train.runtime.session import join_sample_generation, report, save_run_config
from lmforge.train.runtime.signals import stopped_message
from lmforge.train.runtime.tracking import finish_trackers, log_samples
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


def run_trainer_stage(cfg: RunConfig, recipe: Any) -> dict:
    """The run of every stage built on a transformers Trainer, from its recipe module: the resume point, the
    stage's `build_trainer(cfg, resume)` (a Trainer, or a setup holding one as `.trainer`, with `stop_ids`), then
    train/save/evaluate/report. A recipe may add `before_training(cfg, built)`, `after_evaluation(cfg, built,
    trainer) -> metrics` and `CHAT_SAMPLES = True` (sample prompts rendered as chat turns, stopped at the end of
    turn)."""
    resume = resolve_resume(cfg.training.output_dir, cfg.training.resume_from_checkpoint)
    built = recipe.build_trainer(cfg, resume)
    trainer = getattr(built, "trainer", built)
    if hasattr(recipe, "before_training"):
        recipe.before_training(cfg, built)
    chat = getattr(recipe, "CHAT_SAMPLES", False)
    stop_ids = getattr(built, "stop_ids", None) or (trainer.model.generation_config.eos_token_id if chat else None)
    after = getattr(recipe, "after_evaluation", None)
    return run_training(cfg, trainer, resume, chat, stop_ids,
                        after_eval=(lambda t: after(cfg, built, t)) if after is not None else None)


def run_training(cfg: RunConfig, trainer: LanguageModelTrainer, resume: str | None, chat: bool = False,
                 stop_ids: list[int] | None = None,
                 after_eval: Callable[[LanguageModelTrainer], dict] | None = None) -> dict:
    """Train (resuming from `resume`), save model and state, evaluate, run `after_eval` (e.g. prediction), plot,
    and generate the sample prompts (as chat turns when `chat`). Returns every metric."""
    if trainer.is_world_process_zero():
        save_run_config(cfg)

    use_metrics_console(trainer)
    with lines_above_the_bar():
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
            log_samples(trainer.callback_handler.callbacks, trainer.state.global_step, samples)
        finish_trackers(trainer.callback_handler.callbacks)
    else:
        join_sample_generation(cfg, trainer.model, text_tokenizer(trainer.processing_class), chat, stop_ids)
    return metrics


def stopped_early(trainer: LanguageModelTrainer) -> dict:
    """After a stop at a step end: the checkpoint just saved is the run's state; say how to go on."""
    checkpoint = os.path.join(trainer.args.output_dir, f"checkpoint-{trainer.state.global_step}")
    if trainer.stopped_by == "non-finite steps":
        raise TrainingError(trainer.guard.message(checkpoint))
    if trainer.is_world_process_zero():
        logger.warning(stopped_message(trainer.stopped_by, trainer.state.global_step, trainer.state.max_steps,
                                       checkpoint))
    return {"stopped_at_step": trainer.state.global_step}
