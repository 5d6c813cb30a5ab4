"""The tokenizer of a run, prepared in one place: loaded, or trained as a byte-level BPE on the training corpus
(cached by corpus and settings), with the chat template the run uses and a pad token."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from lmforge.config.model import ModelArguments
from lmforge.config.schema import RunConfig
from lmforge.data.cache import CACHE_FORMAT, cache_root, cached, fingerprint
from lmforge.data.chat_templates import TemplateError, apply_template_choice
from lmforge.data.pretrain import data_identity, load_documents
from lmforge.data.template import stop_token_ids
from lmforge.errors import ConfigError
from lmforge.model import multimodal
from lmforge.model.source import model_not_found

logger = logging.getLogger(__name__)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, special_tokens: list[str]) -> PreTrainedTokenizerFast:
    """A GPT-2/Qwen-style byte-level BPE: any text round-trips, no unknown tokens. The first special token is used
    as EOS and pad (as Qwen's `<|endoftext|>`)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    eos = special_tokens[0]
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=eos, unk_token=None,
                                   model_max_length=1_000_000, clean_up_tokenization_spaces=False)
    fast.add_special_tokens({"additional_special_tokens": list(special_tokens[1:])})
    if len(fast) < vocab_size:
        logger.info("Trained a byte-level BPE tokenizer: %d tokens (the corpus offers no more merges than that; "
                    "%d were allowed)", len(fast), vocab_size)
    else:
        logger.info("Trained a byte-level BPE tokenizer: %d tokens", len(fast))
    return fast


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, revision: str = "main",
                   cache_dir: str | None = None) -> PreTrainedTokenizerBase:
    if why := model_not_found(name_or_path, cache_dir):
        raise ConfigError(f"Config error: could not load a tokenizer from '{name_or_path}': {why}.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code,
                                                  revision=revision, cache_dir=cache_dir)
    except (OSError, ValueError) as err:
        raise ConfigError(f"Config error: could not load a tokenizer from '{name_or_path}': "
                          f"{str(err).splitlines()[0]}") from None
    # Encoders (BERT's WordPiece) ship no EOS: that is fine for classification; pretraining and chat generation say
    # what they need where they need it (data/chunking.py, `chat_tokenizer`).
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def iter_texts(dataset, limit: int | None, batch_size: int = 1000) -> Iterator[list[str]]:
    """Batches of non-empty texts from a dataset's `text` column, for tokenizer training."""
    seen = 0
    for batch in dataset.iter(batch_size=batch_size):
        texts = [t for t in batch["text"] if t]
        if limit is not None:
            texts = texts[: limit - seen]
        seen += len(texts)
        yield texts
        if limit is not None and seen >= limit:
            return


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


def chat_tokenizer(cfg: RunConfig, resume: str | None = None, processor: Any = None
                   ) -> tuple[PreTrainedTokenizerBase, int]:
    """The tokenizer with the chat template the run trains with (and a pad token: load_tokenizer sets one), and how
    many tokens the template added. With a vision-language model's `processor`, its tokenizer (the processor's
    template follows a `template` choice, so it is saved with the model)."""
    tokenizer = processor.tokenizer if processor is not None else setup_tokenizer(cfg, resume)
    added = with_template(tokenizer, cfg.data.template, f" ({cfg.source})")
    if not stop_token_ids(tokenizer):
        raise ConfigError(f"Config error ({cfg.source}): the tokenizer of '{tokenizer.name_or_path}' has no EOS token "
                          f"and its chat template ends no turn with a special token, so a reply would never end. "
                          f"Train a model with a generative tokenizer, or 'stage: cls' for an encoder.")
    if tokenizer.pad_token_id is None:
        raise ConfigError(f"Config error ({cfg.source}): the tokenizer of '{tokenizer.name_or_path}' has neither a pad "
                          f"nor an EOS token to pad batches with.")
    if processor is not None:
        processor.chat_template = tokenizer.chat_template
    return tokenizer, added


def chat_processor(cfg: RunConfig) -> Any:
    """A vision-language model's processor (None for a text model); its stages are sft and dpo, unpacked."""
    if not multimodal.is_multimodal(cfg.model):
        return None
    stage = cfg.finetuning.stage
    if stage not in ("sft", "dpo"):
        raise ConfigError(f"Config error ({cfg.source}): '{cfg.model.model_name_or_path}' is a vision-language "
                          f"model; lmforge trains those with `stage: sft` or `stage: dpo`, not `{stage}`.")
    if cfg.data.packing:
        raise ConfigError(f"Config error ({cfg.source}): 'packing: true' with a vision-language model: multimodal "
                          "examples are not packed (their image tokens and positions stay per example); set "
                          "`packing: false`.")
    processor = multimodal.load_processor(cfg.model)
    logger.info("Vision-language model: takes %s", ", ".join(multimodal.modalities(processor)))
    return processor


def load_inference_tokenizer(args: ModelArguments, template: str | None = None) -> tuple[PreTrainedTokenizerBase, int]:
    """The model's tokenizer (the adapter's own where it saved one), with `template` applied where set. Returns
    the tokenizer and how many tokens the template added."""
    path = args.tokenizer_name_or_path or args.model_name_or_path
    if not args.tokenizer_name_or_path and args.adapter_name_or_path and \
            os.path.isfile(os.path.join(args.adapter_name_or_path, "tokenizer_config.json")):
        path = args.adapter_name_or_path  # lmforge saves the tokenizer (and its chat template) with the adapter
    tokenizer = load_tokenizer(path, args.trust_remote_code, args.model_revision, args.cache_dir)
    return tokenizer, with_template(tokenizer, template) if template is not None else 0


def with_template(tokenizer: PreTrainedTokenizerBase, template: str | None, where: str = "") -> int:
    """Apply the `template` choice (None: the tokenizer's own, which must exist); a bad choice is a config error.
    Returns how many tokens the template added."""
    try:
        return apply_template_choice(tokenizer, template)
    except TemplateError as err:
        raise ConfigError(f"Config error{where}: {err}.") from None
