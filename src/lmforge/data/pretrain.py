"""Pretraining data, end to end: sources -> documents -> (cached) token blocks for the Trainer."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass

from datasets import Dataset, Features, IterableDataset, Sequence, Value
from transformers import PreTrainedTokenizerBase

from lmforge.config.data import DataArguments
from lmforge.data.cache import CACHE_FORMAT, cached_splits, fingerprint, fresh_fingerprint, source_identity
from lmforge.data.chunking import BlockChunker, DocumentBlocks, DocumentTokenizer
from lmforge.data.loading import AnyDataset, TextSplits, load_texts, split_validation
from lmforge.data.registry import resolve_sources
from lmforge.data.stream import BlockStream
from lmforge.errors import DataError

logger = logging.getLogger(__name__)


@dataclass
class PretrainData:
    train: Dataset | BlockStream
    eval: Dataset | None
    from_cache: bool
    stats: dict[str, dict]
    cache_path: str | None = None  # the cache entry the blocks are saved in (None: streamed)


def load_documents(args: DataArguments, seed: int) -> TextSplits:
    """Training and evaluation documents (text), before tokenization."""
    def load(names: str) -> AnyDataset:
        return load_texts(names, args.dataset_dir, text_column=args.text_column, streaming=args.streaming,
                          max_samples=args.max_samples, mix_strategy=args.mix_strategy,
                          interleave_probs=args.interleave_probs, seed=seed,
                          allow_absolute=args.allow_absolute_file_name)

    docs = load(args.dataset)
    splits = TextSplits(docs, load(args.eval_dataset)) if args.eval_dataset else split_validation(
        docs, args.val_size, seed)
    return splits


def data_identity(args: DataArguments, seed: int) -> dict:
    """Everything about the sources and document selection that changes which documents a run sees."""
    specs = resolve_sources(args.dataset, args.dataset_dir, args.text_column, args.allow_absolute_file_name)
    eval_specs = resolve_sources(args.eval_dataset, args.dataset_dir, args.text_column,
                                 args.allow_absolute_file_name) if args.eval_dataset else []
    return {
        "sources": [source_identity(s) for s in specs],
        "eval_sources": [source_identity(s) for s in eval_specs],
        "max_samples": args.max_samples, "val_size": args.val_size, "seed": seed,
        "mix_strategy": args.mix_strategy, "interleave_probs": args.interleave_probs,
    }


def tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    content = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return fingerprint([content, tokenizer.eos_token_id, tokenizer.bos_token_id])


def tokenize_to_blocks(docs: AnyDataset, tokenizer: PreTrainedTokenizerBase, args: DataArguments,
                       name: str, workdir: str | None = None) -> tuple[AnyDataset, BlockChunker]:
    """Tokenize documents (batched: the Rust tokenizer uses every core) and cut the concatenated ids into
    `cutoff_len` blocks, in one sequential pass (the chunker carries each batch's leftover tokens into the next).

    Blocks are written as fixed-length int32 rows to `workdir` (deleted by the caller) instead of the datasets cache:
    memory stays that of one batch whatever the corpus size."""
    chunker = BlockChunker(args.cutoff_len, positions=args.neat_packing)
    blocks = DocumentBlocks(DocumentTokenizer(tokenizer, f"{name} split"), chunker)
    options: dict = {}
    if not isinstance(docs, IterableDataset):
        row = Sequence(Value("int32"), length=args.cutoff_len)
        options = {"desc": f"Tokenizing {name} documents into blocks of {args.cutoff_len} tokens",
                   "new_fingerprint": fresh_fingerprint(),
                   "features": Features({"input_ids": row, **({"position_ids": row} if args.neat_packing else {})}),
                   **({"cache_file_name": os.path.join(workdir, f"{name}-blocks.arrow")} if workdir else {})}
    return docs.map(blocks, batched=True, with_indices=True, batch_size=args.preprocessing_batch_size,
                    remove_columns=["text"], **options), chunker


def _report(name: str, chunker: BlockChunker, cutoff_len: int) -> dict:
    stats = asdict(chunker.stats) | {"dropped_tokens": chunker.remainder, "cutoff_len": cutoff_len}
    logger.info(
        "%s: %s documents -> %s blocks of %d tokens (%s tokens with EOS); %s empty documents skipped; %s tokens of "
        "the final partial block dropped", name, f"{stats['documents']:,}", f"{stats['blocks']:,}", cutoff_len,
        f"{stats['tokens']:,}", f"{stats['empty_documents']:,}", f"{stats['dropped_tokens']:,}")
    return stats


def _materialise(blocks: AnyDataset) -> Dataset:
    return Dataset.from_list([dict(b) for b in blocks])


def build_pretrain_data(args: DataArguments, tokenizer: PreTrainedTokenizerBase, seed: int,
                        blocks_per_step: int = 1) -> PretrainData:
    """Token blocks for the Trainer: cached Arrow tables, or with `streaming` a BlockStream read during training
    (`blocks_per_step`: blocks one optimizer step consumes over all processes, where a checkpoint can fall)."""
    if args.streaming:
        splits = load_documents(args, seed)
        # shuffled after the split, so held-out documents stay the first `val_size` of the stream
        train = BlockStream(splits.train, tokenizer, args.cutoff_len, args.buffer_size, seed,
                            positions=args.neat_packing, blocks_per_step=blocks_per_step)
        eval_blocks = None
        if splits.eval is not None:
            eval_blocks, eval_chunker = tokenize_to_blocks(splits.eval, tokenizer, args, "eval")
            eval_blocks = _materialise(eval_blocks)
            _report("eval", eval_chunker, args.cutoff_len)
        logger.info("Streaming: documents are read and tokenized lazily during training (no cache).")
        return PretrainData(train, eval_blocks, False, {})

    identity = {"format": CACHE_FORMAT, "kind": "pt", "data": data_identity(args, seed),
                "tokenizer": tokenizer_identity(tokenizer), "cutoff_len": args.cutoff_len,
                "neat_packing": args.neat_packing}

    def build(workdir: str) -> tuple[dict, dict]:
        splits = load_documents(args, seed)
        parts, stats = {}, {}
        for name, docs in (("train", splits.train), ("eval", splits.eval)):
            if docs is None:
                continue
            blocks, chunker = tokenize_to_blocks(docs, tokenizer, args, name, workdir)
            parts[name], stats[name] = blocks, _report(name, chunker, args.cutoff_len)
        if len(parts["train"]) == 0:
            raise DataError(f"Data error: the training data has {stats['train']['tokens']:,} tokens, fewer than one "
                            f"block of cutoff_len={args.cutoff_len}; lower cutoff_len or add data.")
        return parts, stats

    entry = cached_splits(args.tokenized_cache_dir, "pt", identity, args.overwrite_cache, build)
    if entry.hit:
        logger.info("Reusing tokenized data from the cache (tokenization skipped): %s", entry.path)
        for name, s in entry.stats.items():
            logger.info("%s: %s blocks of %d tokens from %s documents", name, f"{s['blocks']:,}", s["cutoff_len"],
                        f"{s['documents']:,}")
    return PretrainData(entry.train, entry.eval, entry.hit, entry.stats, entry.path)
