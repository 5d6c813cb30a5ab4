"""`lmforge data prepare`: tokenize a run's data (and, for pretraining, cut it into blocks) into the fingerprinted
cache ahead of training, on a machine without the accelerator, say; `lmforge train` with the same config then reads
it from the cache and says so ("Reusing encoded ... data from the cache (tokenization skipped)"). The cache key is
the data's identity (sources, tokenizer, template, cutoff and every setting that changes an example), so a config that
changes any of it prepares anew rather than reading stale examples; `tokenized_cache_dir` puts the cache on a shared
filesystem."""

from __future__ import annotations

import logging
import time
from typing import Any

from datasets import Dataset

from lmforge.config.schema import RunConfig
from lmforge.config.stages import STAGES
from lmforge.data.packing import packing_efficiency
from lmforge.errors import ConfigError
from lmforge.train.preview import skip_reasons

logger = logging.getLogger(__name__)

TOKEN_COLUMNS = ("input_ids", "chosen_input_ids", "rejected_input_ids")


def token_count(examples: Dataset) -> int:
    """Tokens in every sequence of the examples (chosen and rejected both count for a pair), read as Arrow batches."""
    import pyarrow.compute as pc

    columns = [c for c in TOKEN_COLUMNS if c in examples.column_names]
    total = 0
    for batch in examples.select_columns(columns).with_format("arrow").iter(batch_size=65_536):
        total += sum(pc.sum(pc.list_value_length(batch.column(c))).as_py() or 0 for c in columns)
    return total


def prepare(cfg: RunConfig) -> dict[str, Any]:
    """Build the run's examples as its stage does (into the cache, or from it) and report what is there."""
    started = time.perf_counter()
    kind = STAGES[cfg.finetuning.stage].kind
    if kind == "cls":
        raise ConfigError("Config error: 'stage: cls' tokenizes its rows as it trains; `lmforge data prepare` "
                          "prepares the data of the other stages.")
    from lmforge.train.stage_data import chat_examples, pretrain_inputs

    if kind == "pt":
        if cfg.data.streaming:
            raise ConfigError("Config error: a streamed corpus is tokenized as the run reads it (`streaming: true`); "
                              "set `streaming: false` to prepare it ahead.")
        _, data = pretrain_inputs(cfg)
    else:
        data = chat_examples(cfg).data
    report: dict[str, Any] = {"stage": cfg.finetuning.stage, "path": data.cache_path, "from_cache": data.from_cache,
                              "train_examples": len(data.train), "train_tokens": token_count(data.train),
                              "eval_examples": len(data.eval) if data.eval is not None else 0}
    reasons = {f"{skip['source']}: {skip['reason']}": skip["count"] for skip in skip_reasons(data.stats)}
    empty = {f"{split}: empty document": s["empty_documents"] for split, s in data.stats.items()
             if isinstance(s, dict) and s.get("empty_documents")}  # pt's skips, per split
    report.update(skipped=sum(reasons.values()) + sum(empty.values()), skip_reasons={**reasons, **empty})
    if kind == "sft" and cfg.data.packing:
        rows, efficiency = packing_efficiency(data.train, cfg.data.cutoff_len)
        report.update(packed_rows=rows, packing_efficiency=round(efficiency, 4))
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def print_report(report: dict[str, Any]) -> None:
    how = "read from the cache" if report["from_cache"] else "tokenized now"
    logger.info("Prepared %s data in %.1f s (%s): %s", report["stage"], report["seconds"], how, report["path"])
    unit = "blocks" if report["stage"] == "pt" else "examples"
    logger.info("  train: %s %s, %s tokens; eval: %s %s", f"{report['train_examples']:,}", unit,
                f"{report['train_tokens']:,}", f"{report['eval_examples']:,}", unit)
    for reason, count in report["skip_reasons"].items():
        logger.info("  skipped: %s × %s", f"{count:,}", reason)
    if "packing_efficiency" in report:
        logger.info("  packed into %s rows (%.1f %% of the row space holds tokens)", f"{report['packed_rows']:,}",
                    100 * report["packing_efficiency"])
    logger.info("`lmforge train` with this config reads it from there (tokenization skipped).")
