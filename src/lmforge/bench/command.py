"""The `lmforge bench` command line: which benchmark to run (training speed by default; --compare,
--packing-compare, --preprocess, --serve, --eval-prefix-compare, --suite gpu), and its report."""

from __future__ import annotations

import argparse
import json
import os
import sys

from lmforge.bench.training import __doc__ as TRAINING_DOC
from lmforge.bench.training import bench_config, compare_baseline, compare_packing, report, run


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lmforge bench", description=TRAINING_DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="run YAML (the same file `lmforge train` takes)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--json", dest="json_path", help="also write the figures to this JSON file")
    parser.add_argument("--compare", action="store_true",
                        help="also run the common way (transformers' Trainer, per-batch padding, the model's own "
                        "loss over full logits) on the same config in this process, and print lmforge / baseline; "
                        "with a grpo config: a step of TRL's GRPOTrainer at equal settings")
    parser.add_argument("--preprocess", action="store_true",
                        help="sft: examples/s of lmforge's encoding (workers: preprocessing_num_workers) against a "
                        "per-example datasets.map + apply_chat_template, and of a cache hit")
    parser.add_argument("--prepare", action="store_true",
                        help="`lmforge data prepare CONFIG` end to end in a fresh process on a cold cache: seconds, "
                        "tokens/s and peak memory (anonymous and resident)")
    parser.add_argument("--packing-compare", action="store_true",
                        help="sft: measure the config packed (packing=true) and padded (packing=false) in this "
                        "process, and print the ratios")
    parser.add_argument("--eval-prefix-compare", action="store_true",
                        help="CONFIG is an `lmforge eval` config of a multiple-choice benchmark: time it without and "
                        "with prefix KV reuse in this process and print the speed-up and whether the results agree")
    parser.add_argument("--serve", action="store_true",
                        help="CONFIG is a model directory or an `lmforge api` config: drive the OpenAI endpoint with "
                        "--clients streaming clients arriving at random, with continuous and with static batching, "
                        "and check every text against the request alone")
    parser.add_argument("--clients", type=int, default=16, help="with --serve: concurrent clients")
    parser.add_argument("--max-tokens", type=int, default=64, help="with --serve: max_tokens of each request")
    parser.add_argument("--arrival-gap", type=float, default=0.05,
                        help="with --serve: mean seconds between two clients' arrivals (exponential)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="with --compare, --packing-compare, --eval-prefix-compare, --preprocess or --prepare: "
                        "runs per path (best kept)")
    parser.add_argument("--suite", choices=["gpu", "models", "export"],
                        help="gpu: the GPU check (bench/gpu_check.sh): a 0.5B model built from a config; SFT MFU and "
                        "memory, losses, packing, serving, FSDP2/DeepSpeed; writes gpu_check.json/.md to --output. "
                        "models: every stage on a tiny model of every family in --families (real tokenizer files, "
                        "templates and configs); writes the support table to --output (docs/models.md). export: "
                        "every GGUF type and compressed-tensors scheme on a 256-wide tiny model of every causal family "
                        "(size, perplexity, KL divergence); writes --output (docs/export-matrix.md)")
    parser.add_argument("--smoke", action="store_true", help="with --suite gpu: a tiny model, so it runs on a CPU")
    parser.add_argument("--output", help="with --suite: where its files go (gpu_check; docs/models.md)")
    parser.add_argument("--families", help="with --suite models: a folder of family folders (config.json, tokenizer "
                        "files, chat template; no weights); default $LMFORGE_REAL_MODELS or ../shared/data/real_models")
    parser.add_argument("--family", action="append", help="with --suite models: only this family (repeatable)")
    ns = parser.parse_args(argv)
    from lmforge.logs import setup_logging

    setup_logging()
    config, overrides = ns.config, list(ns.overrides)
    if config and "=" in config:
        config, overrides = None, [config, *overrides]
    if ns.suite == "models":
        return _model_suite(ns.families, ns.family, ns.output or "docs/models.md")
    if ns.suite == "export":
        return _export_suite(ns.families, ns.family, ns.output or "docs/export-matrix.md")
    if ns.suite:
        from lmforge.bench.gpu_suite import run_suite, table

        result = run_suite(ns.output or "gpu_check", smoke=ns.smoke, steps=ns.steps if ns.steps != 20 else 10)
        print(table(result))
        if result["failed"]:
            print(f"failed checks: {', '.join(result['failed'])}", file=sys.stderr)
            return 1
    elif ns.serve:
        from lmforge.bench.serving import compare_serving
        from lmforge.bench.serving import report as serve_report

        result = compare_serving(config, overrides, ns.clients, ns.max_tokens, ns.arrival_gap)
        print(serve_report(result))
    elif ns.eval_prefix_compare:
        from lmforge.bench.eval_prefix import compare_prefix_reuse
        from lmforge.bench.eval_prefix import report as eval_report

        result = compare_prefix_reuse(config, overrides, ns.repeats)
        print(eval_report(result))
    elif ns.prepare:
        from lmforge.bench.prepare import measure_prepare
        from lmforge.bench.prepare import report as prepare_report

        result = measure_prepare(config, overrides, ns.repeats)
        print(prepare_report(result))
    elif ns.preprocess:
        from lmforge.bench import preprocess as prep_bench

        result = prep_bench.compare_preprocessing(bench_config(config, overrides, 1, 0), ns.repeats)
        print(prep_bench.report(result))
    elif ns.compare and _stage_of(config, overrides) == "grpo":
        from lmforge.bench.rl import compare_grpo
        from lmforge.bench.rl import report as rl_report

        result = compare_grpo(config, overrides, ns.steps, ns.warmup)
        print(rl_report(result))
    elif ns.compare:
        result = compare_baseline(config, overrides, ns.steps, ns.warmup, ns.repeats)
    elif ns.packing_compare:
        result = compare_packing(config, overrides, ns.steps, ns.warmup, ns.repeats)
    else:
        result = run(config, overrides, ns.steps, ns.warmup)
        print(report(result))
    if ns.json_path:
        with open(ns.json_path, "w") as fh:
            json.dump(result, fh, indent=2)
    sys.stdout.flush()
    return 0


def _stage_of(config: str | None, overrides: list[str]) -> str:
    """The config's stage as the file and overrides set it (the benchmark it picks builds and checks the config)."""
    from lmforge.config.parse import merge, parse_overrides, read_yaml

    raw = merge(read_yaml(config) if config else {}, parse_overrides(overrides))
    return str(raw.get("stage", "pt"))


def _export_suite(families: str | None, only: list[str] | None, output: str) -> int:
    """`--suite export`: every export format on every causal family, written as tables."""
    import tempfile

    from lmforge.bench.export_matrix import run_export_matrix, table
    from lmforge.bench.model_matrix import default_families_dir
    from lmforge.errors import ConfigError
    from lmforge.jsonl import atomic_open

    families = families or default_families_dir()
    data = os.path.join(os.path.dirname(os.path.abspath(families or ".")), "llamafactory_demo")
    if not families or not os.path.isdir(families) or not os.path.isfile(os.path.join(data, "alpaca_en_demo.json")):
        raise ConfigError("Config error (command line): `lmforge bench --suite export` needs --families DIR, a folder "
                          "of family folders, with llamafactory_demo/alpaca_en_demo.json beside it (the held-out and "
                          f"calibration text); got {families!r}.")
    with tempfile.TemporaryDirectory(prefix="lmforge-export-") as work:
        matrix = run_export_matrix(families, work, data, only)
    with atomic_open(output) as fh:
        fh.write(table(matrix))
    print(f"Wrote {output}: {len(matrix['results'])} families in {matrix['seconds']} s")
    return 0


def _model_suite(families: str | None, only: list[str] | None, output: str) -> int:
    """`--suite models`: the real-family matrix, written as a table; 1 when a cell failed."""
    import tempfile

    from lmforge.bench.model_matrix import default_families_dir, run_matrix, table
    from lmforge.errors import ConfigError
    from lmforge.jsonl import atomic_open

    families = families or default_families_dir()
    if not families or not os.path.isdir(families):
        raise ConfigError("Config error (command line): `lmforge bench --suite models` needs --families DIR, a "
                          f"folder of family folders (each a config.json and tokenizer files); got {families!r}.")
    with tempfile.TemporaryDirectory(prefix="lmforge-models-") as work:
        matrix = run_matrix(families, work, only)
    text = table(matrix)
    with atomic_open(output) as fh:
        fh.write(text)
    failed = [f"{family} / {stage}" for family, cells in matrix["results"].items()
              for stage, (status, _) in cells.items() if status == "failed"]
    print(f"Wrote {output}: {len(matrix['results'])} families in {matrix['seconds']} s"
          + (f"; failed: {', '.join(failed)}" if failed else "; every applicable cell passed"))
    return 1 if failed else 0
