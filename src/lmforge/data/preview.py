"""`lmforge data preview|dump`: see exactly which tokens a run trains on, before training."""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from lmforge.config.schema import RunConfig
from lmforge.data.collate import IGNORE_INDEX, PretrainCollator
from lmforge.data.packing import packing_efficiency
from lmforge.errors import ConfigError


@dataclass
class ProcessedData:
    tokenizer: PreTrainedTokenizerBase
    train: Dataset  # input_ids, labels (+ source, record for SFT)
    eval: Dataset | None
    stats: dict


def processed_data(cfg: RunConfig) -> ProcessedData:
    """The examples of a run exactly as its stage builds them (from the cache when it holds them)."""
    if cfg.finetuning.stage == "sft":
        from lmforge.data.sft import build_sft_data
        from lmforge.train.sft import chat_tokenizer

        tokenizer, _ = chat_tokenizer(cfg)
        data = build_sft_data(cfg.data, tokenizer, cfg.training.seed)
        return ProcessedData(tokenizer, data.train, data.eval, data.stats)
    if cfg.data.streaming:
        raise ConfigError("Config error: `lmforge data` reads the whole dataset; it does not support streaming.")
    from lmforge.data.pretrain import build_pretrain_data
    from lmforge.train.setup import setup_tokenizer

    tokenizer = setup_tokenizer(cfg)
    data = build_pretrain_data(cfg.data, tokenizer, cfg.training.seed)

    def with_labels(blocks: Dataset) -> Dataset:  # the labels PretrainCollator gives each block
        collate = PretrainCollator()
        return blocks.map(lambda row: {"labels": collate([row])["labels"][0].tolist()}, desc="labels")

    return ProcessedData(tokenizer, with_labels(data.train), with_labels(data.eval) if data.eval else None,
                         data.stats)


def trained_runs(ids: list[int], labels: list[int]) -> list[tuple[bool, list[int]]]:
    """Consecutive tokens grouped by whether they are trained."""
    runs: list[tuple[bool, list[int]]] = []
    for token, label in zip(ids, labels, strict=True):
        trained = label != IGNORE_INDEX
        if runs and runs[-1][0] == trained:
            runs[-1][1].append(token)
        else:
            runs.append((trained, [token]))
    return runs


def render_example(tokenizer: PreTrainedTokenizerBase, ids: list[int], labels: list[int], styled: bool) -> str:
    """The example's text with trained tokens green (terminal) or in ⟦ ⟧ brackets (plain text)."""
    parts = []
    for trained, run in trained_runs(ids, labels):
        text = tokenizer.decode(run, skip_special_tokens=False)
        if styled:
            from rich.markup import escape

            parts.append(f"[bold green]{escape(text)}[/]" if trained else f"[dim]{escape(text)}[/]")
        else:
            parts.append(f"⟦{text}⟧" if trained else text)
    return "".join(parts)


def length_stats(examples: Dataset, cutoff_len: int) -> dict:
    lengths = sorted(len(x) for x in examples["input_ids"])
    trained = [sum(label != IGNORE_INDEX for label in x) for x in examples["labels"]]
    rows, efficiency = packing_efficiency(examples, cutoff_len)
    return {
        "examples": len(lengths), "tokens": sum(lengths), "trained_tokens": sum(trained),
        "length_mean": round(statistics.fmean(lengths), 1) if lengths else 0,
        "length_p50": lengths[len(lengths) // 2] if lengths else 0,
        "length_p95": lengths[min(int(0.95 * len(lengths)), len(lengths) - 1)] if lengths else 0,
        "length_max": lengths[-1] if lengths else 0,
        "packed_rows": rows, "packing_efficiency": round(efficiency, 4),
    }


def preview(cfg: RunConfig, num: int = 3) -> dict:
    from rich.console import Console

    data = processed_data(cfg)
    styled = sys.stdout.isatty()
    console = Console(highlight=False, soft_wrap=True)
    n = min(num, len(data.train))
    for i in range(n):
        row = data.train[i]
        where = f" ({row['source']} record {row['record']})" if "source" in row else ""
        title = f"── example {i}{where}: {len(row['input_ids'])} tokens, " \
                f"{sum(label != IGNORE_INDEX for label in row['labels'])} trained "
        console.print(title + "─" * max(0, 100 - len(title)), markup=False)
        text = render_example(data.tokenizer, row["input_ids"], row["labels"], styled)
        console.print(text, markup=styled)
    stats = length_stats(data.train, cfg.data.cutoff_len)
    stats["skipped"] = sum(s.get("skipped", s.get("empty_documents", 0)) for s in data.stats.values()
                           if isinstance(s, dict))
    stats["truncated"] = sum(s.get("truncated", 0) for s in data.stats.values() if isinstance(s, dict))
    console.print("── statistics (train split) " + "─" * 72, markup=False)
    if not styled:
        console.print("Trained tokens are shown in ⟦ ⟧.", markup=False)
    for key in ("examples", "tokens", "trained_tokens", "length_mean", "length_p50", "length_p95", "length_max",
                "truncated", "skipped", "packed_rows", "packing_efficiency"):
        console.print(f"{key:>20}: {stats[key]}", markup=False)
    for source, s in data.stats.items():
        if isinstance(s, dict) and s.get("skip_reasons"):
            for reason, count in s["skip_reasons"].items():
                console.print(f"{'skipped':>20}: {count} × {reason} ({source})", markup=False)
    return stats


def dump(cfg: RunConfig, output: str) -> int:
    """Write every processed example as a JSON line; the file appears only when complete."""
    data = processed_data(cfg)
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".dump-", dir=directory)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for split, examples in (("train", data.train), ("eval", data.eval)):
                if examples is None:
                    continue
                for row in examples:
                    record = {"split": split, "input_ids": list(row["input_ids"]), "labels": list(row["labels"])}
                    for key in ("source", "record", "truncated", "position_ids"):
                        if key in row:
                            record[key] = row[key]
                    fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                    count += 1
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"Wrote {count:,} examples to {output}")
    return count
