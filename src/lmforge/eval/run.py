"""`lmforge eval`: load the model, run the task, write results.json and predictions.jsonl, print a table."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

from lmforge.config.evaluation import CLS_TASK, GENERATE_TASK, PERPLEXITY_TASK
from lmforge.config.schema import EvalConfig
from lmforge.errors import ConfigError
from lmforge.eval.benchmarks import Benchmark, load_benchmark
from lmforge.eval.prompts import PromptStyle, prompt_style_is_chat
from lmforge.jsonl import write_json, write_jsonl
from lmforge.model.inference import load_inference_model
from lmforge.model.tokenizer import load_inference_tokenizer
from lmforge.runstatus import EVAL_RESULTS_FILE as RESULTS_FILE

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.jsonl"


def run_task(cfg: EvalConfig, model: Any, tokenizer: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(results, predictions) of the configured task."""
    e = cfg.eval
    if e.harness_tasks:
        from lmforge.eval.harness import run_harness

        return run_harness(model, tokenizer, cfg), []
    if e.task == PERPLEXITY_TASK:
        from lmforge.data.loading import load_texts
        from lmforge.eval.ppl import perplexity, token_stream

        d = cfg.data
        texts = load_texts(d.dataset, d.dataset_dir, text_column=d.text_column, max_samples=d.max_samples,
                           allow_absolute=d.allow_absolute_file_name)
        stream = token_stream(tokenizer, [t for t in texts["text"] if t])
        window = min(d.cutoff_len, getattr(model.config, "max_position_embeddings", None) or d.cutoff_len)
        stride = min(e.stride or max(window // 2, 1), window)
        results = perplexity(model, stream, window, stride, e.batch_size)
        return {**results, "documents": len(texts), "window": window, "stride": stride}, []
    if e.task == CLS_TASK:
        from lmforge.eval.classify import evaluate_classifier

        return evaluate_classifier(model, tokenizer, cfg)
    if e.task == GENERATE_TASK:
        from lmforge.eval.generate import evaluate_generation

        if not tokenizer.chat_template:
            raise ConfigError(f"Config error ({cfg.source}): 'task: generate' renders prompts with a chat template; "
                              "the tokenizer has none, so set `template`.")
        return evaluate_generation(model, tokenizer, cfg)
    from lmforge.eval.mc import evaluate_benchmark

    bench, style = benchmark_and_style(cfg, tokenizer)
    logger.info("Benchmark %s (%s): %d subjects, %d questions; %d-shot, %s prompts, %s scoring, prefix reuse %s",
                e.task, bench.path, len(bench.subjects), sum(len(s.test) for s in bench.subjects), e.n_shot,
                "chat" if style.chat else "plain", e.scoring, "on" if e.prefix_reuse else "off")
    results, predictions = evaluate_benchmark(model, tokenizer, bench, e, style)
    return {**results, "prompt_style": "chat" if style.chat else "plain", "lang": style.lang}, predictions


def benchmark_and_style(cfg: EvalConfig, tokenizer: Any) -> tuple[Benchmark, PromptStyle]:
    """The configured multiple-choice benchmark and how its prompts are written."""
    e = cfg.eval
    bench = load_benchmark(e.task, e.task_dir, e.split, e.n_shot, e.subjects, cfg.data.max_samples)
    style = PromptStyle(chat=prompt_style_is_chat(cfg, tokenizer), lang=bench.lang if e.lang == "auto" else e.lang,
                        list_options=e.scoring == "letter")
    return bench, style


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate; returns what results.json holds."""
    import torch

    torch.manual_seed(cfg.eval.seed)
    tokenizer, _ = load_inference_tokenizer(cfg.model, cfg.data.template)
    model = load_inference_model(cfg.model, tokenizer)
    started = time.perf_counter()
    results, predictions = run_task(cfg, model, tokenizer)
    seconds = time.perf_counter() - started
    task = f"harness:{cfg.eval.harness_tasks}" if cfg.eval.harness_tasks else cfg.eval.task
    out = {"task": task, **results, "seconds": round(seconds, 3), "model": cfg.model.model_name_or_path,
           "adapter": cfg.model.adapter_name_or_path, "config": _config_dict(cfg)}
    os.makedirs(cfg.eval.output_dir, exist_ok=True)
    write_json(os.path.join(cfg.eval.output_dir, RESULTS_FILE), out)
    if predictions and cfg.eval.save_predictions:
        write_jsonl(os.path.join(cfg.eval.output_dir, PREDICTIONS_FILE), predictions)
    from lmforge.eval.report import print_results

    print_results(out)
    logger.info("Results written to %s", os.path.join(cfg.eval.output_dir, RESULTS_FILE))
    return out


def _config_dict(cfg: EvalConfig) -> dict[str, Any]:
    """Every key of the run with its resolved value (so results.json says exactly what was measured)."""
    return {name: dataclasses.asdict(getattr(cfg, name)) for name in ("model", "data", "generation", "eval")}
