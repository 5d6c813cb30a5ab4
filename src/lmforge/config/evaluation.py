"""What `lmforge eval` measures: a multiple-choice benchmark, perplexity, or generation against references."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lmforge.config.fields import option

# Tasks that are not a multiple-choice benchmark folder.
PERPLEXITY_TASK = "perplexity"
GENERATE_TASK = "generate"
CLS_TASK = "cls"


@dataclass
class EvalArguments:
    task: str = option(
        "cmmlu",
        "A multiple-choice benchmark in the MMLU / CMMLU / C-Eval file layout (`mmlu`, `cmmlu`, `ceval` or any "
        "folder name under `task_dir`); `perplexity` (of the `dataset` texts); `generate` (answers to the "
        "`dataset` prompts, scored against their references); or `cls` (a classifier on the labelled `dataset` rows: "
        "`text_column`, `text_pair_column`, `label_column`; scikit-learn's metrics).")
    task_dir: str = option(
        "evaluation",
        "Folder holding the benchmark: `task_dir/task/` or `task_dir` itself, with `dev/` and `test/` (or `val/`) "
        "CSV files, one per subject, and optionally a `mapping.json` of subject -> {name, category}.")
    split: str = option("test", "The benchmark split scored (`test`, or `val` for C-Eval, whose test has no answers).")
    subjects: list[str] | None = option(None, "Only these subjects (file names without the split suffix).")
    n_shot: int = option(5, "Solved examples from the dev split put before each question.")
    scoring: Literal["letter", "loglik", "loglik_norm"] = option(
        "letter",
        "`letter`: probability of each choice letter as the next token. `loglik`: log-likelihood of each option's "
        "text after the question. `loglik_norm`: the same divided by the option's length in characters.")
    prompt_style: Literal["auto", "chat", "plain"] = option(
        "auto",
        "`chat`: questions as user turns in the model's chat template (`template` for a tokenizer without one), "
        "answers as assistant turns. `plain`: one text prompt, for base models. `auto`: chat where the tokenizer "
        "has a chat template or `template` is set.")
    lang: Literal["auto", "en", "zh"] = option(
        "auto", "Language of the prompt wording (`auto`: Chinese for cmmlu and ceval, English otherwise).")
    prefix_reuse: bool = option(
        True,
        "Compute a prefix shared by several prompts (the few-shot examples, a question shared by its options) "
        "once and reuse its KV cache. The scores equal those of the plain path.")
    batch_size: int = option(8, "Sequences per forward pass (prompts, options or text windows).")
    stride: int | None = option(
        None, "perplexity: tokens the window advances by; each token is scored once, with up to `cutoff_len` tokens "
        "of context (default: half of `cutoff_len`).")
    output_dir: str | None = option(
        None, "Where results.json and predictions.jsonl are written (required).")
    save_predictions: bool = option(True, "Write every example's prediction to predictions.jsonl.")
    harness_tasks: str | None = option(
        None, "Comma-separated lm-evaluation-harness tasks run through `lm_eval.simple_evaluate` with this model "
        "(needs the `harness` extra); `n_shot`, `max_samples` and `batch_size` apply.")
    harness_include_path: str | None = option(
        None, "A folder of your own lm-evaluation-harness task YAML files, so `harness_tasks` can name them.")
    seed: int = option(42, "Seed for sampling in `generate`.")
