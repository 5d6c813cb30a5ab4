"""`lmforge bench CONFIG --preprocess`: examples/s of lmforge's SFT encoding against the straightforward way.

The straightforward way is a per-example `datasets.map` calling `apply_chat_template(tokenize=True)` (ids only, no
labels). lmforge's batched encoder renders each conversation (plus one marker rendering per assistant message, to
find the trained tokens), tokenizes a whole batch in one call, labels from offsets, with
`preprocessing_num_workers` processes; a second run reads the on-disk cache. All on the same conversations, in this
process, one after the other.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time

from datasets import Dataset, disable_caching, enable_caching

from lmforge.config.schema import RunConfig
from lmforge.data.encode import ConversationEncoder
from lmforge.data.examples import build_examples, label_options, source_conversations
from lmforge.data.registry import resolve_sources
from lmforge.model.tokenizer import chat_tokenizer


def conversations(cfg: RunConfig) -> list[str]:
    """Every training source's records, normalised to conversations (JSON), as the encoder receives them."""
    d = cfg.data
    specs = resolve_sources(d.dataset, d.dataset_dir, allow_absolute=d.allow_absolute_file_name)
    return [json.dumps(c, ensure_ascii=False)
            for spec in specs for _, c in source_conversations(spec, d, cfg.training.seed)[1]]


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare_preprocessing(cfg: RunConfig, repeats: int = 3) -> dict:
    tokenizer, _ = chat_tokenizer(cfg)
    table = Dataset.from_dict({"conversation": conversations(cfg)})
    n = len(table)
    workers = cfg.data.preprocessing_num_workers

    def baseline() -> None:
        def one(example: dict) -> dict:
            c = json.loads(example["conversation"])
            return {"input_ids": tokenizer.apply_chat_template(c["messages"], tools=c.get("tools"), tokenize=True,
                                                               return_dict=False)}

        table.map(one, remove_columns=["conversation"])

    def ours() -> None:
        table.map(ConversationEncoder(tokenizer, label_options(cfg.data)), batched=True,
                  batch_size=min(cfg.data.preprocessing_batch_size, 256), num_proc=workers,
                  remove_columns=["conversation"])

    disable_caching()  # every map runs for real
    try:
        seconds = {"baseline": min(_timed(baseline) for _ in range(repeats)),
                   "lmforge": min(_timed(ours) for _ in range(repeats))}
    finally:
        enable_caching()
    with tempfile.TemporaryDirectory() as cache:
        args = dataclasses.replace(cfg.data, tokenized_cache_dir=cache, val_size=0.0, eval_dataset=None)
        build_examples(args, tokenizer, cfg.training.seed)  # fills the cache
        seconds["lmforge cache hit"] = min(_timed(lambda: build_examples(args, tokenizer, cfg.training.seed))
                                           for _ in range(repeats))
    rates = {name: n / s for name, s in seconds.items()}
    return {"examples": n, "workers": workers or 1, "seconds": seconds, "examples_per_second": rates,
            "ratio": rates["lmforge"] / rates["baseline"]}


def report(r: dict) -> str:
    rates = r["examples_per_second"]
    return "\n".join([
        f"lmforge bench --preprocess: {r['examples']:,} conversations, {r['workers']} worker(s), best of repeats",
        f"  per-example map + apply_chat_template   {rates['baseline']:,.0f} examples/s (ids only)",
        f"  lmforge batched encoder                 {rates['lmforge']:,.0f} examples/s (ids + labels)  "
        f"x{r['ratio']:.2f}",
        f"  lmforge, on-disk cache hit              {rates['lmforge cache hit']:,.0f} examples/s",
    ])
