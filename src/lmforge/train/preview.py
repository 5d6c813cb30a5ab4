"""`lmforge data preview|dump`: see exactly which tokens a run trains on, before training."""

from __future__ import annotations

import json
import statistics
import sys
from collections import Counter
from dataclasses import dataclass

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from lmforge.config.schema import RunConfig
from lmforge.config.stages import STAGES
from lmforge.data.collate import IGNORE_INDEX, PretrainCollator
from lmforge.data.packing import packing_efficiency
from lmforge.errors import ConfigError
from lmforge.jsonl import write_jsonl


@dataclass
class ProcessedData:
    tokenizer: PreTrainedTokenizerBase
    train: Dataset  # input_ids, labels; or chosen_/rejected_ ids and labels (+ source, record after pt)
    eval: Dataset | None
    stats: dict
    media_ids: frozenset[int] = frozenset()  # a vision-language model's image/video tokens


def sequences(row: dict) -> list[tuple[str, list[int], list[int]]]:
    """(title, ids, labels) of each token sequence of an example: one, or chosen and rejected for a pair."""
    if "chosen_input_ids" in row:
        return [(side, row[f"{side}_input_ids"], row[f"{side}_labels"]) for side in ("chosen", "rejected")]
    labels = row.get("labels", [IGNORE_INDEX] * len(row["input_ids"]))  # a prompt (ppo/grpo) trains no token
    return [("", row["input_ids"], labels)]


def processed_data(cfg: RunConfig) -> ProcessedData:
    """The examples of a run exactly as its stage builds them (from the cache when it holds them)."""
    if STAGES[cfg.finetuning.stage].kind == "cls":
        raise ConfigError("Config error: `lmforge data preview|dump` shows which tokens a run trains on; "
                          "'stage: cls' trains a label per row (its skipped rows are in the training log).")
    from lmforge.train.stage_data import chat_examples, pretrain_inputs

    if STAGES[cfg.finetuning.stage].kind != "pt":  # the examples exactly as the stage builds them
        from lmforge.data.multimodal import media_token_ids

        stage = chat_examples(cfg)
        processor = stage.processor
        media_ids = frozenset(media_token_ids(processor)) if processor is not None else frozenset()
        return ProcessedData(stage.tokenizer, stage.data.train, stage.data.eval, stage.data.stats, media_ids)
    if cfg.data.streaming:
        raise ConfigError("Config error: `lmforge data` reads the whole dataset; it does not support streaming.")
    tokenizer, data = pretrain_inputs(cfg)

    def with_labels(blocks: Dataset) -> Dataset:  # the labels PretrainCollator gives each block
        collate = PretrainCollator()
        return blocks.map(lambda row: {"labels": collate([row])["labels"][0].tolist()}, desc="labels")

    return ProcessedData(tokenizer, with_labels(data.train), with_labels(data.eval) if data.eval else None,
                         data.stats)


def trained_runs(ids: list[int], labels: list[int], media_ids: frozenset[int] = frozenset()
                 ) -> list[tuple[bool | None, list[int]]]:
    """Consecutive tokens grouped by whether they are trained (None: a run of image/video tokens)."""
    runs: list[tuple[bool | None, list[int]]] = []
    for token, label in zip(ids, labels, strict=True):
        trained = None if token in media_ids else label != IGNORE_INDEX
        if runs and runs[-1][0] == trained:
            runs[-1][1].append(token)
        else:
            runs.append((trained, [token]))
    return runs


def _media_run(tokenizer: PreTrainedTokenizerBase, run: list[int]) -> str:
    """One image's (video's) tokens as one mark: its placeholder token and count, plus its delimiters."""
    token, count = Counter(run).most_common(1)[0]
    others = len(run) - count
    return f"⟪{tokenizer.convert_ids_to_tokens(token)} ×{count}{f' +{others}' if others else ''}⟫"


def segments(tokenizer: PreTrainedTokenizerBase, ids: list[int], labels: list[int],
             media_ids: frozenset[int] = frozenset()) -> list[tuple[str, str]]:
    """The example's text in runs: ("trained" | "context" | "media", text); each image's (video's) tokens are one
    ⟪token ×count⟫ mark."""
    return [("media", _media_run(tokenizer, run)) if trained is None else
            ("trained" if trained else "context", tokenizer.decode(run, skip_special_tokens=False))
            for trained, run in trained_runs(ids, labels, media_ids)]


def render_example(parts: list[tuple[str, str]], styled: bool) -> str:
    """Segments with trained text green (terminal) or in ⟦ ⟧ brackets (plain text)."""
    if not styled:
        return "".join(f"⟦{text}⟧" if kind == "trained" else text for kind, text in parts)
    from rich.markup import escape

    return "".join(f"[bold green]{escape(text)}[/]" if kind == "trained" else f"[dim]{escape(text)}[/]"
                   for kind, text in parts)


def length_stats(examples: Dataset, cutoff_len: int, packable: bool = True) -> dict:
    """Token counts and lengths over every sequence (chosen and rejected both count for a pair), and how densely
    the examples pack into rows of `cutoff_len` when the stage packs (`packable`)."""
    seqs = [s for row in examples for s in sequences(row)]
    lengths = sorted(len(ids) for _, ids, _ in seqs)
    trained = [sum(label != IGNORE_INDEX for label in labels) for _, _, labels in seqs]
    stats = {
        "examples": len(examples), "tokens": sum(lengths), "trained_tokens": sum(trained),
        "length_mean": round(statistics.fmean(lengths), 1) if lengths else 0,
        "length_p50": lengths[len(lengths) // 2] if lengths else 0,
        "length_p95": lengths[min(int(0.95 * len(lengths)), len(lengths) - 1)] if lengths else 0,
        "length_max": lengths[-1] if lengths else 0,
    }
    if len(seqs) != len(examples):
        stats["sequences"] = len(seqs)
    if packable:
        stats["packed_rows"], efficiency = packing_efficiency(examples, cutoff_len)
        stats["packing_efficiency"] = round(efficiency, 4)
    return stats


STAT_KEYS = ("examples", "sequences", "tokens", "trained_tokens", "length_mean", "length_p50", "length_p95",
             "length_max", "truncated", "skipped", "packed_rows", "packing_efficiency")


def summary(cfg: RunConfig, num: int = 3) -> dict:
    """What `lmforge data preview` shows, as data: the first `num` examples as segments (with where each came from,
    its token and trained-token counts), the train split's statistics, and every skip reason with its count."""
    data = processed_data(cfg)
    steps = STAGES[cfg.finetuning.stage].kind == "steps"  # prm: the trained tokens are separators labelled 1/0
    examples = []
    for i in range(min(num, len(data.train))):
        row = data.train[i]
        for name, ids, labels in sequences(row):
            examples.append({
                "example": i, "sequence": name, "source": row.get("source"), "record": row.get("record"),
                "kto_label": row.get("kto_label"), "tokens": len(ids),
                "trained_tokens": sum(label != IGNORE_INDEX for label in labels),
                "segments": segments(data.tokenizer, ids, labels, data.media_ids),
                **({"step_labels": [label for label in labels if label != IGNORE_INDEX]} if steps else {})})
    stats = length_stats(data.train, cfg.data.cutoff_len, packable=cfg.finetuning.stage in ("pt", "sft"))
    per_source = [(source, s) for source, s in data.stats.items() if isinstance(s, dict)]
    stats["skipped"] = sum(s.get("skipped", s.get("empty_documents", 0)) for _, s in per_source)
    stats["truncated"] = sum(s.get("truncated", 0) for _, s in per_source)
    return {"examples": examples, "stats": stats, "skips": skip_reasons(data.stats)}


def skip_reasons(stats: dict) -> list[dict]:
    """Each source's skipped records by reason (from the per-source statistics the data step records)."""
    return [{"source": source, "reason": reason, "count": count} for source, s in stats.items() if isinstance(s, dict)
            for reason, count in (s.get("skip_reasons") or {}).items()]


def preview(cfg: RunConfig, num: int = 3, as_json: bool = False) -> dict:
    """Print the summary (examples with their trained tokens marked, then the statistics, or all of it as JSON) and
    return it."""
    result = summary(cfg, num)
    if as_json:
        print(json.dumps(result, ensure_ascii=False))
        return result
    from rich.console import Console

    styled = sys.stdout.isatty()
    console = Console(highlight=False, soft_wrap=True)
    for ex in result["examples"]:
        where = f" ({ex['source']} record {ex['record']})" if ex["source"] is not None else ""
        if ex["kto_label"] is not None:
            where += f", {'desirable' if ex['kto_label'] else 'undesirable'}"
        if "step_labels" in ex:  # each step's label, in order: correct or not
            where += ", steps " + " ".join("correct" if label else "incorrect" for label in ex["step_labels"])
        title = f"── example {ex['example']}{' ' + ex['sequence'] if ex['sequence'] else ''}{where}: " \
                f"{ex['tokens']} tokens, {ex['trained_tokens']} trained "
        console.print(title + "─" * max(0, 100 - len(title)), markup=False)
        console.print(render_example(ex["segments"], styled), markup=styled)
    stats = result["stats"]
    console.print("── statistics (train split) " + "─" * 72, markup=False)
    if not styled:
        console.print("Trained tokens are shown in ⟦ ⟧.", markup=False)
    for key in STAT_KEYS:
        if key in stats:
            console.print(f"{key:>20}: {stats[key]}", markup=False)
    for skip in result["skips"]:
        console.print(f"{'skipped':>20}: {skip['count']} × {skip['reason']} ({skip['source']})", markup=False)
    return result


def dump(cfg: RunConfig, output: str) -> int:
    """Write every processed example as a JSON line; the file appears only when complete."""
    data = processed_data(cfg)

    keys = ("input_ids", "labels", "chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels",
            "kto_label", "source", "record", "truncated", "position_ids")

    def records():
        for split, examples in (("train", data.train), ("eval", data.eval)):
            if examples is None:
                continue
            # and a vision-language model's: the image/video files and the processor's per-token outputs
            columns = [k for k in keys if k in examples.column_names] + \
                [c for c in examples.column_names if c not in keys and c != "conversation"]
            # whole batches out of Arrow (row-by-row access converts one row at a time, far slower)
            for batch in examples.select_columns(columns).iter(batch_size=1000):
                for values in zip(*(batch[k] for k in columns), strict=True):
                    yield {"split": split, **dict(zip(columns, values, strict=True))}

    count = write_jsonl(output, records())
    print(f"Wrote {count:,} examples to {output}")
    return count
