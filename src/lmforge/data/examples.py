"""Conversation data for every stage after pretraining: sources -> examples -> (cached) token ids and labels.

One pipeline for all of them: every record is normalised to the example kind its stage needs (`formats.ExampleKind`:
conversations for sft, chosen/rejected pairs for rm and dpo, labelled conversations for kto, prompts for ppo and
grpo, labelled steps for prm), rendered with the chat template and labelled by rendering (`data/template.py`).
Records that cannot be used are skipped and counted per source and reason.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from lmforge.config.data import DataArguments
from lmforge.config.stages import STAGES
from lmforge.data import media
from lmforge.data.cache import (
    CACHE_FORMAT,
    PREPARED_FILE,
    CachedSplits,
    cached_splits,
    fresh_fingerprint,
    read_splits,
    source_identity,
)
from lmforge.data.encode import KIND_COLUMNS, ConversationEncoder, LabelOptions
from lmforge.data.formats import ConversationFormat, ExampleKind, SkipRecord, SkipReport, normalise_records
from lmforge.data.loading import mix, split_validation
from lmforge.data.multimodal import MediaOptions, MultimodalEncoder
from lmforge.data.pretrain import tokenizer_identity
from lmforge.data.records import read_records
from lmforge.data.registry import SourceSpec, resolve_sources
from lmforge.errors import DataError
from lmforge.jsonl import json_text

logger = logging.getLogger(__name__)

def stage_kind(stage: str) -> ExampleKind:
    """The example kind a (registered) stage after pt trains on."""
    return STAGES[stage].kind  # type: ignore[return-value]


def model_columns(kind: ExampleKind, data: Dataset | None = None) -> list[str]:
    """The encoded columns a trainer's collator reads (the rest is for people: source, record, truncated); with
    `data`, also its media columns and per-token processor outputs (multimodal examples)."""
    columns = [c for c in KIND_COLUMNS[kind] if c != "truncated"]
    if data is not None:
        columns += [c for c in data.column_names if c not in columns and c not in PEOPLE_COLUMNS]
    return columns


PEOPLE_COLUMNS = ("truncated", "conversation", "record", "source")


@dataclass
class ExampleData:
    train: Dataset  # KIND_COLUMNS[kind], conversation (JSON), record, source
    eval: Dataset | None
    from_cache: bool
    stats: dict[str, dict] = field(default_factory=dict)  # per source: records, examples, skipped, truncated
    cache_path: str | None = None  # the cache entry the splits are saved in


def label_options(args: DataArguments) -> LabelOptions:
    return LabelOptions(args.cutoff_len, args.mask_history, args.train_on_prompt, args.enable_thinking,
                        args.step_separator)


def media_options(args: DataArguments) -> MediaOptions:
    return MediaOptions(args.image_max_pixels, args.image_min_pixels, args.video_fps, args.video_maxlen,
                        args.video_max_pixels)


def make_encoder(tokenizer: PreTrainedTokenizerBase, args: DataArguments, kind: ExampleKind,
                 processor: Any = None) -> ConversationEncoder | MultimodalEncoder:
    """The encoder of a run: the processor's for a vision-language model, the tokenizer's otherwise."""
    if processor is not None:
        return MultimodalEncoder(processor, label_options(args), media_options(args), kind)
    return ConversationEncoder(tokenizer, label_options(args), kind)


def source_format(spec: SourceSpec, records: list) -> ConversationFormat:
    """The layout named by the source's dataset_info.json entry, or detected from its first record's fields."""
    if spec.entry.get("formatting") or spec.entry.get("columns"):
        try:
            return ConversationFormat.from_entry(spec.entry)
        except ValueError as err:
            raise DataError(f"Data error: dataset_info.json entry '{spec.name}': {err}.") from None
    fields = list(records[0]) if records and isinstance(records[0], dict) else []
    detected = ConversationFormat.detect(fields)
    if detected is None:
        raise DataError(f"Data error: source '{spec.name}' does not look like conversation data: its records have "
                        f"fields {', '.join(fields) or 'none'}; expected 'instruction'/'output' (alpaca), "
                        "'conversations' (sharegpt) or 'messages' (openai), or a dataset_info.json entry naming the "
                        "columns.")
    return detected


def _sample(records: list, spec: SourceSpec, max_samples: int | None, seed: int) -> list:
    if spec.num_samples is not None and records:
        import numpy as np

        idx = np.random.default_rng(seed).permutation(len(records))
        reps = -(-spec.num_samples // len(records))
        records = [records[i] for i in np.tile(idx, reps)[: spec.num_samples]]
    return records[:max_samples] if max_samples is not None else records


def source_conversations(spec: SourceSpec, args: DataArguments, seed: int, kind: ExampleKind = "sft"
                         ) -> tuple[list, list[tuple[int, dict]], SkipReport]:
    """A source's selected records, those usable as `kind` (record index, normalised example), and the skips."""
    records = _sample(read_records(spec), spec, args.max_samples, seed)
    conversations, report = normalise_records(records, source_format(spec, records), spec.name, kind)
    return records, _with_media_found(conversations, spec, args, report), report


def _with_media_found(conversations: list[tuple[int, dict]], spec: SourceSpec, args: DataArguments,
                      report: SkipReport) -> list[tuple[int, dict]]:
    """Examples whose image/video files all exist, referenced by absolute path (relative paths are looked up in
    `dataset_dir`, then beside the data file); the others are skipped naming the file."""
    base_dirs = list(dict.fromkeys([args.dataset_dir, *(os.path.dirname(f) for f in spec.files)]))
    kept = []
    for index, example in conversations:
        try:
            kept.append((index, media.resolve_example(example, base_dirs)))
        except SkipRecord as err:
            report.add(index, str(err))
    return kept


def encode_source(spec: SourceSpec, tokenizer: PreTrainedTokenizerBase, args: DataArguments, seed: int,
                  workdir: str | None = None, kind: ExampleKind = "sft", processor: Any = None
                  ) -> tuple[Dataset, dict]:
    """One source's usable examples of `kind` and its counts (records, examples, skips by reason, truncated)."""
    records, conversations, report = source_conversations(spec, args, seed, kind)
    table = Dataset.from_dict({"conversation": [json_text(c) for _, c in conversations],
                               "record": [i for i, _ in conversations], "source": [spec.name] * len(conversations)})
    files = {"cache_file_name": os.path.join(workdir, f"{spec.name.replace('/', '_')}.arrow")} if workdir else {}
    if len(table) == 0:
        raise DataError(f"Data error: source '{spec.name}': none of its {len(records):,} records is a usable "
                        f"{KIND_NAMES[kind]} ({report.summary()}).")
    started = time.perf_counter()
    workers = preprocessing_workers(args.preprocessing_num_workers, len(table))
    encoded = table.map(make_encoder(tokenizer, args, kind, processor), batched=True,
                        batch_size=min(args.preprocessing_batch_size, 256), num_proc=workers,
                        desc=f"Encoding {spec.name}", new_fingerprint=fresh_fingerprint(), **files)
    rate = len(table) / max(time.perf_counter() - started, 1e-9)
    skips = _column(encoded, "skip")
    for record, reason in zip(_column(encoded, "record"), skips, strict=True):
        if reason:
            report.add(record, reason)
    examples = encoded.select([i for i, skip in enumerate(skips) if not skip]) if report.total else encoded
    examples = examples.remove_columns("skip")
    stats = {"records": len(records), "examples": len(examples), "skipped": report.total,
             "skip_reasons": dict(report.reasons), "truncated": int(sum(_column(examples, "truncated")))}
    if report.total:
        logger.warning(report.summary())
    logger.info("%s: %s records -> %s examples (%s skipped, %s truncated to cutoff_len=%d); encoded at %s "
                "examples/s", spec.name, f"{stats['records']:,}", f"{stats['examples']:,}", f"{stats['skipped']:,}",
                f"{stats['truncated']:,}", args.cutoff_len, f"{rate:,.0f}")
    return examples, stats


# From about this many records, worker processes pay for their start (forking, the tokenizer sent to each, one
# Arrow file per worker joined afterwards): measured on 2 cores, 20,000 alpaca examples encode x1.3 faster with 2.
WORKERS_FROM_RECORDS = 4000


def preprocessing_workers(configured: int | None, records: int) -> int | None:
    """`preprocessing_num_workers`, or where unset, one per CPU core (at most 8) for `records` >= 4,000."""
    if configured is not None or records < WORKERS_FROM_RECORDS:
        return configured
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(cores, 8) if cores > 1 else None


def _column(data: Dataset, name: str) -> list:
    """A whole column as a Python list, straight from Arrow (iterating `data[name]` converts row by row)."""
    return data.data.column(name).to_pylist()


KIND_NAMES = {"sft": "conversation", "pair": "preference pair (prompt, chosen, rejected)",
              "kto": "conversation with a true/false label", "prompt": "prompt",
              "steps": "prompt with labelled steps (completions, labels)"}


def examples_identity(args: DataArguments, tokenizer: PreTrainedTokenizerBase, seed: int, kind: ExampleKind,
                      processor: Any = None, read_sources: bool = True) -> dict:
    """Everything that changes the encoded examples. Not `read_sources`: the sources by name only (what a
    `tokenized_dir` is checked against, on a machine that may not have the raw data)."""
    def sources(names: str | None) -> list[dict] | str | None:
        if not read_sources:
            return names
        specs = resolve_sources(names, args.dataset_dir, allow_absolute=args.allow_absolute_file_name) if names else []
        return [source_identity(s) for s in specs]

    return {"format": CACHE_FORMAT, "kind": kind, "sources": sources(args.dataset),
            "eval_sources": sources(args.eval_dataset), "max_samples": args.max_samples, "val_size": args.val_size,
            "seed": seed, "mix_strategy": args.mix_strategy, "interleave_probs": args.interleave_probs,
            "tokenizer": tokenizer_identity(tokenizer), "chat_template": tokenizer.chat_template,
            "labels": label_options(args).__dict__,
            **({"processor": processor_identity(processor), "media": media_options(args).__dict__}
               if processor is not None else {})}


def processor_identity(processor: Any) -> dict:
    """What in a processor decides the ids: its class and its media processors' settings (the tokenizer and
    template are keyed separately)."""
    parts = {name: getattr(processor, name).to_dict() for name in ("image_processor", "video_processor")
             if getattr(processor, name, None) is not None and hasattr(getattr(processor, name), "to_dict")}
    return {"class": type(processor).__name__, **json.loads(json.dumps(parts, default=str))}


def build_examples(args: DataArguments, tokenizer: PreTrainedTokenizerBase, seed: int,
                   kind: ExampleKind = "sft", processor: Any = None) -> ExampleData:
    """The train (and eval) examples of `kind`, encoded, from the cache when it holds them (`processor`: a
    vision-language model's, whose encoder also keeps the examples' images)."""
    def encode_all(names: str, workdir: str, stats: dict) -> Dataset:
        parts = []
        for spec in resolve_sources(names, args.dataset_dir, allow_absolute=args.allow_absolute_file_name):
            part, stats[spec.name] = encode_source(spec, tokenizer, args, seed, workdir, kind, processor)
            parts.append(part)
        return mix(parts, args.mix_strategy, args.interleave_probs, seed)

    def build(workdir: str) -> tuple[dict, dict]:
        stats: dict[str, dict] = {}
        train = encode_all(args.dataset, workdir, stats)
        if len(train) == 0:
            raise DataError("Data error: no trainable example is left after skipping: " + "; ".join(
                f"{name}: {', '.join(s['skip_reasons']) or 'no records'}" for name, s in stats.items()))
        if args.eval_dataset:
            return {"train": train, "eval": encode_all(args.eval_dataset, workdir, stats)}, stats
        splits = split_validation(train, args.val_size, seed)
        return {"train": splits.train, **({"eval": splits.eval} if splits.eval is not None else {})}, stats

    if args.tokenized_dir:
        entry = prepared_splits(args, kind, examples_identity(args, tokenizer, seed, kind, processor, False), build)
    else:
        entry = cached_splits(args.tokenized_cache_dir, kind,
                              examples_identity(args, tokenizer, seed, kind, processor), args.overwrite_cache, build)
        if entry.hit:
            logger.info("Reusing encoded %s data from the cache (tokenization skipped): %s", kind, entry.path)
    return ExampleData(entry.train, entry.eval, entry.hit, entry.stats, entry.path)


def prepared_splits(args: DataArguments, kind: str, settings: dict, build: Any) -> CachedSplits:
    """`tokenized_dir`: the examples prepared there, read without the raw data if the settings that shape them are
    those they were prepared with; else built and saved there (atomically), with those settings beside them."""
    folder = args.tokenized_dir
    settings = json.loads(json.dumps(settings, sort_keys=True, default=str))  # as it reads back from the file
    manifest = os.path.join(folder, PREPARED_FILE)
    if os.path.isdir(folder) and not os.path.isfile(manifest):  # never written over (nor, overwriting, deleted)
        if os.listdir(folder):
            raise DataError(f"Data error: tokenized_dir '{folder}' holds files but no prepared examples "
                            f"({PREPARED_FILE} is missing): name an empty or new folder.")
        os.rmdir(folder)  # an empty folder made ahead: the examples are written in its place
    if os.path.isfile(manifest) and not args.overwrite_cache:
        with open(manifest, encoding="utf-8") as fh:
            prepared = json.load(fh)
        differ = sorted(k for k in set(settings) | set(prepared) if settings.get(k) != prepared.get(k))
        if differ:
            raise DataError(f"Data error: tokenized_dir '{folder}' holds examples prepared with other settings "
                            f"({', '.join(differ)} differ): prepare it again with `overwrite_cache: true`, or name "
                            "another folder.")
        logger.info("Reading the prepared %s examples in %s (the raw data is not read)", kind, folder)
        return read_splits(folder)
    return cached_splits(None, kind, settings, args.overwrite_cache, build, path=folder, prepared=settings)
