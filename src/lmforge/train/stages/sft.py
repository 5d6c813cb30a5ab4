"""Stage `sft`: supervised fine-tuning on conversations, labels derived from the chat template."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from datasets import Dataset

from lmforge.config.data import DataArguments
from lmforge.config.schema import RunConfig
from lmforge.data.collate import SftCollator
from lmforge.data.examples import ExampleData, model_columns
from lmforge.data.packing import pack_examples, uses_packing
from lmforge.train.predict import predict
from lmforge.train.run import text_tokenizer
from lmforge.train.runtime.split_checkpoint import is_split_model
from lmforge.train.shared_setup import policy_model, prepare_chat_stage, trainer_kwargs
from lmforge.train.trainer import LanguageModelTrainer

logger = logging.getLogger(__name__)


CHAT_SAMPLES = True  # the sample prompts are chat turns, stopped at the end of turn


def training_rows(examples: Dataset, args: DataArguments) -> Dataset:
    """What the Trainer iterates: the examples, or rows of packed examples."""
    examples = examples.select_columns(model_columns("sft", examples))
    if not uses_packing(args):
        return examples
    rows = pack_examples(examples, args.cutoff_len)
    tokens = sum(len(x) for x in examples["input_ids"])
    logger.info("Packing: %s examples -> %s rows of %d tokens (%.1f%% of the row space holds tokens)",
                f"{len(examples):,}", f"{len(rows):,}", args.cutoff_len,
                100 * tokens / max(len(rows) * args.cutoff_len, 1))
    return rows


@dataclass
class SftSetup:
    trainer: LanguageModelTrainer
    data: ExampleData
    stop_ids: list[int]


def build_trainer(cfg: RunConfig, resume: str | None = None) -> SftSetup:
    """Tokenizer + template, data, model (+ adapters) and Trainer for an sft run (shared with `lmforge bench`)."""
    stage = prepare_chat_stage(cfg, resume)
    trainer = LanguageModelTrainer(
        model=policy_model(cfg, stage), train_dataset=training_rows(stage.data.train, cfg.data),
        data_collator=stage.collator(SftCollator(stage.tokenizer.pad_token_id)),
        loraplus_lr_ratio=cfg.finetuning.loraplus_lr_ratio, optimizer_settings=cfg.finetuning,
        chunked_loss=cfg.finetuning.chunked_loss,
        **trainer_kwargs(cfg, stage))
    return SftSetup(trainer, stage.data, stage.stop_ids)


def after_evaluation(cfg: RunConfig, setup: SftSetup, trainer: LanguageModelTrainer) -> dict:
    """`do_predict` + `predict_with_generate`: generate for the held-out prompts and score them."""
    if not (cfg.training.do_predict and cfg.generation.predict_with_generate):
        return {}
    if not trainer.is_world_process_zero() and not is_split_model(trainer.model):
        return {}  # (a model split over the processes generates with all of them)
    main = trainer.is_world_process_zero()
    scores = predict(cfg, trainer.model, text_tokenizer(trainer.processing_class), setup.data.eval, write=main)
    if not main:
        return {}
    trainer.log_metrics("predict", scores)
    return scores
