"""Pretraining blocks from a streamed corpus, with a position a checkpoint can store and a resumed run restores.

Why not the Trainer's own resume for streams: it re-reads the stream from the start and throws away what was
already trained on (hours for a large corpus), and `datasets`' shuffle buffer is not part of its state_dict (the
documents in it would be skipped). Here the shuffle buffer, the token remainder and the source position (the
`datasets` state_dict: shard and offset of each source, and the interleaving RNG) are recorded after every block
that can end an optimizer step; a checkpoint stores the one matching the blocks the run has trained on.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from datasets import IterableDataset
from transformers import PreTrainedTokenizerBase

from lmforge.data.chunking import BlockChunker, ChunkStats, DocumentTokenizer
from lmforge.jsonl import atomic_open

logger = logging.getLogger(__name__)

STATE_FILE = "stream_state.json"
_KEPT_POSITIONS = 16  # step boundaries remembered: the Trainer reads at most a few steps ahead of training


class BlockStream(torch.utils.data.IterableDataset):
    """`cutoff_len` blocks (dicts of input_ids, and position_ids with `positions`) cut from documents drawn
    through a seeded shuffle buffer of `buffer_size` documents. `blocks_per_step` (blocks consumed per optimizer
    step over all processes) says where a checkpoint can fall."""

    def __init__(self, docs: IterableDataset, tokenizer: PreTrainedTokenizerBase, cutoff_len: int,
                 buffer_size: int, seed: int, positions: bool = False, blocks_per_step: int = 1,
                 tokenize_batch: int = 64) -> None:
        self.docs = docs
        self.tokenizer = DocumentTokenizer(tokenizer, "streamed train")
        self.cutoff_len, self.buffer_size, self.seed, self.positions = cutoff_len, buffer_size, seed, positions
        self.blocks_per_step, self.tokenize_batch = blocks_per_step, tokenize_batch
        self.positions_seen: deque[tuple[int, dict]] = deque(maxlen=_KEPT_POSITIONS)
        self.blocks = 0  # blocks handed out since the start of the run (resumed runs included)
        self.documents_read = 0  # documents this process pulled from the source (for reports and tests)
        self.epoch = 0
        self._resume: dict | None = None

    # ---- position ---------------------------------------------------------------------------------------------
    def position(self, blocks: int) -> dict | None:
        """The state after `blocks` blocks, if it is still remembered."""
        for count, state in self.positions_seen:
            if count == blocks:
                return state
        return None

    def restore(self, state: dict) -> None:
        """Continue from a stored position at the next iteration (instead of the start of the stream)."""
        self._resume = state
        self.blocks = state["blocks"]

    # ---- iteration --------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        state, self._resume = self._resume, None
        epoch = state["epoch"] if state else self.epoch
        self.docs.set_epoch(epoch)
        if state:
            self.docs.load_state_dict(state["source"])
            logger.info("Stream resumed after %s blocks (%s documents read before; nothing is read again).",
                        f"{state['blocks']:,}", f"{state['documents']:,}")
        rng = random.Random(self.seed + epoch)
        buffer: list[str] = []
        chunker = BlockChunker(self.cutoff_len, positions=self.positions)
        pending: list[dict] = []
        documents = 0
        if state:
            rng.setstate(_rng_state(state["rng"]))
            buffer = list(state["buffer"])
            chunker._ids = np.asarray(state["remainder_ids"], dtype=np.int32)
            chunker._pos = np.asarray(state["remainder_positions"], dtype=np.int32)
            chunker.stats = ChunkStats(**state["stats"])
            pending = state["pending"]
            documents = state["documents"]

        def record() -> None:
            if self.blocks % self.blocks_per_step == 0:
                self.positions_seen.append((self.blocks, {
                    "blocks": self.blocks, "epoch": epoch, "documents": documents,
                    "source": self.docs.state_dict(), "buffer": list(buffer),  # state_dict() is a copy already
                    "rng": rng.getstate(), "remainder_ids": chunker._ids.tolist(),
                    "remainder_positions": chunker._pos.tolist(), "stats": asdict(chunker.stats),
                    "pending": list(pending)}))

        def emit() -> Iterator[dict[str, torch.Tensor]]:
            while pending:
                block = pending.pop(0)
                self.blocks += 1
                record()
                yield {k: torch.tensor(v) for k, v in block.items()}

        def cut(texts: list[str]) -> None:
            """Batched fast tokenization of the drawn documents into pending blocks (done only between emissions,
            so a recorded position never has drawn documents that are not yet blocks)."""
            out = chunker(self.tokenizer({"text": texts}, list(range(documents - len(texts), documents))))
            pending.extend({k: list(map(int, v[i])) for k, v in out.items()} for i in range(len(out["input_ids"])))
            texts.clear()

        yield from emit()
        drawn: list[str] = []
        for doc in self.docs:
            documents += 1
            self.documents_read += 1
            if len(buffer) < self.buffer_size:
                buffer.append(doc["text"])
                continue
            j = rng.randrange(len(buffer))
            drawn.append(buffer[j])
            buffer[j] = doc["text"]
            if len(drawn) == self.tokenize_batch:
                cut(drawn)
                yield from emit()
        rng.shuffle(buffer)
        while buffer:
            drawn.append(buffer.pop())
            if len(drawn) == self.tokenize_batch or not buffer:
                cut(drawn)
                yield from emit()
        if drawn:
            cut(drawn)
            yield from emit()
        self._report(chunker, epoch)
        self.epoch = epoch + 1  # a run longer than the corpus starts another pass (reshuffled)

    def _report(self, chunker: BlockChunker, epoch: int) -> None:
        s = chunker.stats
        logger.info("Stream pass %d ended: %s documents -> %s blocks of %d tokens; %s empty documents skipped; %s "
                    "tokens of the final partial block dropped", epoch, f"{s.documents:,}", f"{s.blocks:,}",
                    self.cutoff_len, f"{s.empty_documents:,}", f"{chunker.remainder:,}")


def _rng_state(saved: Any) -> tuple:
    """random.Random state, from its tuple or its JSON form (lists)."""
    version, internal, gauss = saved
    return version, tuple(internal), gauss


def save_position(stream: BlockStream, blocks: int, directory: str) -> bool:
    """Write the stream position after `blocks` blocks into a checkpoint directory."""
    state = stream.position(blocks)
    if state is None:
        logger.warning("The stream position after %s blocks was not recorded: a run resumed from this checkpoint "
                       "re-reads the stream from its start.", f"{blocks:,}")
        return False
    with atomic_open(os.path.join(directory, STATE_FILE)) as fh:
        json.dump(state, fh)
    return True


def load_position(directory: str) -> dict | None:
    path = os.path.join(directory, STATE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
