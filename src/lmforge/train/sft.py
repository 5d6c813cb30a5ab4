"""Stage `sft`: supervised fine-tuning on conversations, labels derived from the chat template."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from datasets import Dataset
from transformers import PreTrainedTokenizerBase, set_seed

from lmforge.config.data import DataArguments
from lmforge.config.schema import RunConfig
from lmforge.data.chat_templates import TemplateError, apply_template_choice
from lmforge.data.collate import SftCollator
from lmforge.data.packing import pack_examples, uses_packing
from lmforge.data.examples import ExampleData, build_examples, model_columns
from lmforge.data.template import stop_token_ids
from lmforge.errors import ConfigError
from lmforge.model.adapters import apply_finetuning_type
from lmforge.model.build import build_model
from lmforge.train.callbacks import JsonlLogCallback
from lmforge.train.checkpoint import resolve_resume
from lmforge.train.predict import predict
from lmforge.train.run import run_training
from lmforge.train.setup import setup_tokenizer
from lmforge.train.tracking import check_trackers, tracking_callbacks
from lmforge.train.trainer import LanguageModelTrainer

logger = logging.getLogger(__name__)


def chat_tokenizer(cfg: RunConfig, resume: str | None = None) -> tuple[PreTrainedTokenizerBase, int]:
    """The tokenizer with the chat template the run trains with, a pad token, and how many tokens were added."""
    tokenizer = setup_tokenizer(cfg, resume)
    try:
        added = apply_template_choice(tokenizer, cfg.data.template)
    except TemplateError as err:
        raise ConfigError(f"Config error ({cfg.source}): {err}.") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, added


def training_rows(examples: Dataset, args: DataArguments) -> Dataset:
    """What the Trainer iterates: the examples, or rows of packed examples."""
    examples = examples.select_columns(model_columns("sft"))
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
    args = cfg.training
    check_trackers(args)
    set_seed(args.seed)
    with args.main_process_first(desc="encoding SFT data"):
        tokenizer, added = chat_tokenizer(cfg, resume)
        data = build_examples(cfg.data, tokenizer, args.seed)
    stop_ids = stop_token_ids(tokenizer)
    model = build_model(cfg.model, tokenizer)
    # generate() in chat, api and evaluation stops where training taught the model to end its turn
    model.generation_config.eos_token_id = stop_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model = apply_finetuning_type(model, cfg.finetuning, added)
    trainer = LanguageModelTrainer(
        model=model, args=args, train_dataset=training_rows(data.train, cfg.data),
        eval_dataset=data.eval.select_columns(model_columns("sft")) if data.eval is not None else None,
        data_collator=SftCollator(tokenizer.pad_token_id), processing_class=tokenizer,
        loraplus_lr_ratio=cfg.finetuning.loraplus_lr_ratio,
        callbacks=[JsonlLogCallback(args.output_dir), *tracking_callbacks(args, cfg.tracking)])
    return SftSetup(trainer, data, stop_ids)


def run_sft(cfg: RunConfig) -> dict:
    resume = resolve_resume(cfg.training.output_dir, cfg.training.resume_from_checkpoint)
    setup = build_trainer(cfg, resume)

    def predict_step(trainer: LanguageModelTrainer) -> dict:
        if not (cfg.training.do_predict and cfg.generation.predict_with_generate):
            return {}
        if not trainer.is_world_process_zero():
            return {}
        scores = predict(cfg, trainer.model, trainer.processing_class, setup.data.eval)
        trainer.log_metrics("predict", scores)
        return scores

    return run_training(cfg, setup.trainer, resume, chat=True, stop_ids=setup.stop_ids, after_eval=predict_step)
