"""Load a tokenizer, or train a byte-level BPE one on the training corpus with the `tokenizers` library."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from lmforge.errors import ConfigError

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
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code,
                                                  revision=revision, cache_dir=cache_dir)
    except (OSError, ValueError) as err:
        raise ConfigError(f"Config error: could not load a tokenizer from '{name_or_path}': "
                          f"{str(err).splitlines()[0]}") from None
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"Config error: the tokenizer at '{name_or_path}' has no EOS token; pretraining needs one "
                          "to separate documents.")
    if tokenizer.pad_token_id is None:
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
