"""Pretraining examples: documents -> token ids with EOS -> concatenated -> fixed-length blocks.

Small pure pieces, each testable alone: `document_affixes` decides what wraps a document, `DocumentTokenizer`
turns text batches into ids, `BlockChunker` cuts the concatenated stream into blocks without losing a token
between batches (only the final partial block is dropped, and counted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from transformers import PreTrainedTokenizerBase

from lmforge.errors import DataError


def document_affixes(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """Ids to put before and after every document: the tokenizer's own BOS (if it adds one) and exactly one EOS."""
    if tokenizer.eos_token_id is None:
        raise DataError(f"Data error: the tokenizer '{tokenizer.name_or_path}' has no EOS token; pretraining needs one "
                        "to separate documents (set `tokenizer_name_or_path` to one that has, or train one with "
                        "`train_tokenizer: true`).")
    probe = "lmforge"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    special = tokenizer(probe, add_special_tokens=True)["input_ids"]
    prefix: list[int] = []
    for start in range(len(special) - len(plain) + 1):
        if special[start : start + len(plain)] == plain:
            prefix = special[:start]
            break
    return prefix, [tokenizer.eos_token_id]


@dataclass
class DocumentTokenizer:
    """Batched fast tokenization of a `text` column into int32 id arrays; an empty document yields no ids (counted
    by the chunker)."""

    tokenizer: PreTrainedTokenizerBase
    source: str = "dataset"

    def __post_init__(self) -> None:
        self.prefix, self.suffix = document_affixes(self.tokenizer)
        # a fast tokenizer's Rust backend, asked for ids only: transformers' call also computes offsets and masks a
        # pretraining corpus never reads (twice the time, measured); its ids are the same (a test compares them)
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        self._encode = getattr(backend, "encode_batch_fast", None)
        self._prefix, self._suffix = np.asarray(self.prefix, np.int32), np.asarray(self.suffix, np.int32)

    def ids(self, texts: list[str]) -> list[list[int]]:
        if self._encode is not None:
            return [e.ids for e in self._encode(texts, add_special_tokens=False)]
        # verbose=False: a document longer than model_max_length is fine here, it is cut into blocks later
        return self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

    def __call__(self, batch: dict, indices: list[int]) -> dict:
        texts = batch["text"]
        for text, index in zip(texts, indices, strict=True):
            if text is not None and not isinstance(text, str):
                raise DataError(f"Data error: {self.source} record {index}: field 'text' must be a string, got "
                                f"{type(text).__name__}.")
        nonempty = [t for t in texts if t]
        encoded = iter(self.ids(nonempty) if nonempty else [])
        empty = np.zeros(0, np.int32)
        return {"input_ids": [np.concatenate([self._prefix, np.asarray(next(encoded), np.int32), self._suffix])
                              if t else empty for t in texts]}


@dataclass
class ChunkStats:
    documents: int = 0
    empty_documents: int = 0
    tokens: int = 0
    blocks: int = 0


@dataclass
class BlockChunker:
    """Concatenate documents and cut `block_size` blocks (int32 arrays, `[blocks, block_size]`), carrying the
    remainder into the next batch.

    With `positions=True` each block also gets position ids that restart at 0 at every document start and at the
    block start (document masking / neat packing).
    """

    block_size: int
    positions: bool = False
    stats: ChunkStats = field(default_factory=ChunkStats)
    _ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    _pos: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))

    @property
    def remainder(self) -> int:
        """Tokens waiting for the next batch; after the last batch, the dropped final partial block."""
        return len(self._ids)

    def __call__(self, batch: dict) -> dict:
        docs = batch["input_ids"]
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        self.stats.documents += len(docs)
        self.stats.empty_documents += int((lengths == 0).sum())
        self.stats.tokens += int(lengths.sum())
        flat = np.concatenate([np.asarray(d, np.int32) for d in docs]) if docs else np.zeros(0, np.int32)
        ids = np.concatenate([self._ids, flat])
        n_blocks = len(ids) // self.block_size
        cut = n_blocks * self.block_size
        out = {"input_ids": ids[:cut].reshape(n_blocks, self.block_size)}
        self._ids = ids[cut:]
        if self.positions:
            starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
            pos = np.concatenate([self._pos, (np.arange(len(flat), dtype=np.int64) - starts).astype(np.int32)])
            blocks = pos[:cut].reshape(n_blocks, self.block_size)
            # A document cut by the block boundary restarts at 0 too: its tail is a document of its own here.
            started = np.cumsum(blocks == 0, axis=1) > 0
            out["position_ids"] = np.where(started, blocks, blocks - blocks[:, :1])
            self._pos = pos[cut:]
        self.stats.blocks += n_blocks
        return out


@dataclass
class DocumentBlocks:
    """Text batches straight to blocks in one pass: nothing is written between tokenizing and cutting, so a corpus
    streams through with memory bounded by one batch (the chunker carries its remainder between batches)."""

    tokenizer: DocumentTokenizer
    chunker: BlockChunker

    def __call__(self, batch: dict, indices: list[int]) -> dict:
        return self.chunker(self.tokenizer(batch, indices))
