"""`lmforge bench --eval-prefix-compare EVAL_CONFIG`: multiple-choice evaluation timed with and without prefix reuse
in the same process, on the same model and questions; prints the speed-up, the tokens each path ran through the
model, and whether the two paths agree."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from lmforge.config.parse import load_eval_config


def _count_tokens(model: torch.nn.Module) -> tuple[list[int], Any]:
    """A counter of input tokens (padding included: that is the work done) and the hook that fills it."""
    counter = [0]

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        counter[0] += ids.numel()

    return counter, model.register_forward_pre_hook(hook, with_kwargs=True)


def compare_prefix_reuse(config: str | None, overrides: list[str], repeats: int = 1) -> dict[str, Any]:
    from lmforge.eval.mc import evaluate_benchmark
    from lmforge.eval.run import benchmark_and_style
    from lmforge.model.inference import load_inference_model
    from lmforge.model.tokenizer import load_inference_tokenizer

    cfg = load_eval_config(config, ["output_dir=lmforge-bench", *overrides])
    e = cfg.eval
    tokenizer, _ = load_inference_tokenizer(cfg.model, cfg.data.template)
    model = load_inference_model(cfg.model, tokenizer)
    bench, style = benchmark_and_style(cfg, tokenizer)
    counter, handle = _count_tokens(model)
    runs: dict[bool, dict[str, Any]] = {}
    for _ in range(repeats):
        for reuse in (False, True):  # alternated, so drift on a shared machine hits both paths alike
            counter[0] = 0
            started = time.perf_counter()
            args = dataclasses.replace(e, prefix_reuse=reuse)
            results, predictions = evaluate_benchmark(model, tokenizer, bench, args, style)
            seconds = time.perf_counter() - started
            best = runs.get(reuse)
            if best is None or seconds < best["seconds"]:
                runs[reuse] = {"seconds": seconds, "tokens": counter[0], "average": results["average"],
                               "predictions": predictions}
    handle.remove()
    plain, reused = runs[False], runs[True]
    diff = max(abs(a - b) for p, q in zip(plain["predictions"], reused["predictions"], strict=True)
               for a, b in zip(p["scores"].values(), q["scores"].values(), strict=True))
    same = [p["prediction"] for p in plain["predictions"]] == [p["prediction"] for p in reused["predictions"]]
    return {"task": e.task, "questions": results["questions"], "n_shot": e.n_shot, "scoring": e.scoring,
            "batch_size": e.batch_size, "device": str(model.device), "dtype": str(model.dtype),
            "plain_seconds": plain["seconds"], "reuse_seconds": reused["seconds"],
            "speedup": plain["seconds"] / reused["seconds"], "plain_tokens": plain["tokens"],
            "reuse_tokens": reused["tokens"], "token_ratio": plain["tokens"] / max(reused["tokens"], 1),
            "same_predictions": same, "max_score_difference": diff, "average": reused["average"]}


def report(r: dict[str, Any]) -> str:
    return "\n".join([
        f"Multiple-choice eval, {r['task']}: {r['questions']:,} questions, {r['n_shot']}-shot, {r['scoring']} scoring, "
        f"batch {r['batch_size']}, {r['dtype']} on {r['device']}",
        f"  plain path:    {r['plain_seconds']:8.2f} s   {r['plain_tokens']:>12,} tokens through the model",
        f"  prefix reuse:  {r['reuse_seconds']:8.2f} s   {r['reuse_tokens']:>12,} tokens through the model",
        f"  speed-up x{r['speedup']:.2f} (tokens x{r['token_ratio']:.2f}); same predictions: {r['same_predictions']}; "
        f"largest score difference {r['max_score_difference']:.2e}; accuracy {r['average']:.2f} %",
    ])
