"""Pieces every training stage assembles first: logging, the tokenizer, the trained parameters' precision."""

from __future__ import annotations

import logging
import os
import shutil

import torch
from transformers import PreTrainedTokenizerBase

from lmforge.config.schema import RunConfig
from lmforge.data.cache import CACHE_FORMAT, cache_root, cached, fingerprint
from lmforge.data.pretrain import data_identity, load_documents
from lmforge.model.precision import DTYPES, set_master_weights
from lmforge.model.tokenizer import iter_texts, load_tokenizer, train_bpe_tokenizer

logger = logging.getLogger(__name__)

STREAMING_TOKENIZER_DOCS = 100_000  # documents a tokenizer is trained on from a stream when no limit is set


def setup_tokenizer(cfg: RunConfig, resume: str | None = None) -> PreTrainedTokenizerBase:
    """Load the configured tokenizer, or train one on the training documents (cached by corpus + settings).
    A resumed run with a trained tokenizer takes the one saved in its checkpoint, whatever the cache holds now."""
    m, seed = cfg.model, cfg.training.seed
    if m.train_tokenizer and resume and os.path.isfile(os.path.join(resume, "tokenizer_config.json")):
        logger.info("Using the tokenizer saved with %s", resume)
        return load_tokenizer(resume)
    if not m.train_tokenizer:
        return load_tokenizer(m.tokenizer_name_or_path or m.model_name_or_path, m.trust_remote_code,
                              m.model_revision, m.cache_dir)
    limit = m.tokenizer_max_samples
    if limit is None and cfg.data.streaming:
        limit = STREAMING_TOKENIZER_DOCS
        logger.info("Streaming corpus: training the tokenizer on its first %s documents (tokenizer_max_samples).",
                    f"{limit:,}")
    key = fingerprint({"format": CACHE_FORMAT, "kind": "tokenizer", "data": data_identity(cfg.data, seed),
                       "vocab_size": m.tokenizer_vocab_size, "special_tokens": m.tokenizer_special_tokens,
                       "max_samples": limit})
    path = os.path.join(cache_root(cfg.data.tokenized_cache_dir), "tokenizers", key)
    if cfg.data.overwrite_cache and os.path.isdir(path):
        shutil.rmtree(path)

    def build(tmp: str) -> None:
        docs = load_documents(cfg.data, seed).train
        tokenizer = train_bpe_tokenizer(
            (t for batch in iter_texts(docs, limit) for t in batch), m.tokenizer_vocab_size,
            m.tokenizer_special_tokens)
        tokenizer.save_pretrained(tmp)

    if cached(path, build):
        logger.info("Reusing the tokenizer trained on this corpus (cache): %s", path)
    return load_tokenizer(path)


def set_precision(model: torch.nn.Module, cfg: RunConfig) -> None:
    """Float32 master weights for what `full`/`freeze` trains (see model/precision.py)."""
    f, t = cfg.finetuning, cfg.training
    set_master_weights(model, f.finetuning_type, autocast=bool(t.bf16 or t.fp16), pure_bf16=f.pure_bf16,
                       engine_keeps_masters=bool(t.deepspeed or t.fsdp))


def save_dtype(cfg: RunConfig) -> torch.dtype | None:
    """The dtype `save_dtype` asks the final model in (None for `auto`: the checkpoint's own)."""
    return DTYPES.get(cfg.finetuning.save_dtype)


def enable_gradient_checkpointing(model: torch.nn.Module, kwargs: dict | None = None) -> None:
    """Recompute activations in the backward pass (what `gradient_checkpointing: true` does in the Trainer), for a
    loop of our own. Non-reentrant unless told otherwise, so frozen embeddings (LoRA) still pass gradients on."""
    kwargs = {"use_reentrant": False, **(kwargs or {})}
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if kwargs["use_reentrant"] and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    model.config.use_cache = False
