"""What every stage after pretraining assembles first: the chat tokenizer, its examples, the policy model, and the
Trainer arguments they share (sft, rm, dpo, kto)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase, set_seed

from lmforge.config.schema import RunConfig
from lmforge.data.examples import ExampleData, build_examples, media_options, model_columns, stage_kind
from lmforge.data.formats import ExampleKind
from lmforge.data.multimodal import MediaOptions, MultimodalCollator, per_token_outputs
from lmforge.data.pretrain import PretrainData, build_pretrain_data
from lmforge.data.template import stop_token_ids
from lmforge.model.adapters import apply_finetuning_type
from lmforge.model.build import build_model
from lmforge.model.tokenizer import chat_processor, chat_tokenizer, setup_tokenizer
from lmforge.train.runtime.log_callback import JsonlLogCallback
from lmforge.train.runtime.resilience import blocks_per_step
from lmforge.train.runtime.tracking import check_trackers, tracking_callbacks
from lmforge.train.setup import parallel_split, set_precision, trainer_arguments


@dataclass
class ChatStage:
    tokenizer: PreTrainedTokenizerBase
    data: ExampleData
    stop_ids: list[int]  # EOS and the template's end-of-turn token
    added_tokens: int  # tokens the template added to the vocabulary
    kind: ExampleKind
    processor: Any = None  # a vision-language model's processor (its tokenizer is `tokenizer`)
    media_options: MediaOptions | None = None

    def train_rows(self) -> Dataset:
        return self.data.train.select_columns(model_columns(self.kind, self.data.train))

    def eval_rows(self) -> Dataset | None:
        if self.data.eval is None:
            return None
        return self.data.eval.select_columns(model_columns(self.kind, self.data.eval))

    def collator(self, text_collator: Any) -> Any:
        """`text_collator` as is for a text model; for a vision-language model, wrapped to add the batch's pixel
        inputs and the processor's per-token outputs."""
        if self.processor is None:
            return text_collator
        return MultimodalCollator(text_collator, self.processor, self.media_options,
                                  tuple(per_token_outputs(self.processor)))


def prepare_chat_stage(cfg: RunConfig, resume: str | None = None) -> ChatStage:
    """Trackers checked, seed set, tokenizer and the stage's examples built (by the first process under torchrun)."""
    check_trackers(cfg.training)
    set_seed(cfg.training.seed)
    return chat_examples(cfg, resume)


def chat_examples(cfg: RunConfig, resume: str | None = None) -> ChatStage:
    """The chat tokenizer (its template applied) and the stage's encoded examples: what a stage after pt trains on
    and what `lmforge data preview|dump` shows (the first process builds them, the others read the cache)."""
    args = cfg.training
    kind = stage_kind(cfg.finetuning.stage)
    processor = chat_processor(cfg)
    with args.main_process_first(desc=f"encoding {kind} data"):
        tokenizer, added = chat_tokenizer(cfg, resume, processor)
        data = build_examples(cfg.data, tokenizer, args.seed, kind, processor)
    return ChatStage(tokenizer, data, stop_token_ids(tokenizer), added, kind, processor, media_options(cfg.data))


def pretrain_inputs(cfg: RunConfig, resume: str | None = None) -> tuple[PreTrainedTokenizerBase, PretrainData]:
    """The tokenizer (loaded or trained) and the pretraining blocks: what `stage: pt` trains on and what `lmforge
    data preview|dump` shows. Under torchrun the first process trains the tokenizer and fills the cache."""
    args = cfg.training
    with args.main_process_first(desc="preparing tokenizer and pretraining data"):
        tokenizer = setup_tokenizer(cfg, resume)
        return tokenizer, build_pretrain_data(cfg.data, tokenizer, args.seed, blocks_per_step=blocks_per_step(args))


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
