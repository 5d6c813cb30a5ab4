"""`lmforge synth`: data from a stronger model behind any OpenAI-compatible endpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lmforge.config.fields import option

# A pairwise judgement as `lmforge synth` (task judge) and online DPO's `judge_url` ask for it
DEFAULT_RUBRIC = "Which answer is more helpful, correct and clear?"
DEFAULT_JUDGE_TEMPLATE = ("{rubric}\n\nQuestion:\n{prompt}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n\n"
                          "Reply with exactly one letter: A or B.")


@dataclass
class SynthArguments:
    teacher_base_url: str | None = option(
        None, "The OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 or `lmforge api`'s http://HOST:PORT/v1.")
    teacher_model: str | None = option(None, "The model name sent with each request.")
    teacher_api_key_env: str = option(
        "OPENAI_API_KEY", "The environment variable holding the endpoint's API key (none needed when it is unset).")
    synth_task: Literal["answer", "self_instruct", "judge", "rewrite"] = option(
        "answer", "`answer`: the teacher answers each prompt of `dataset` (`num_samples` times) -> sft records; "
        "`self_instruct`: from the instructions of `dataset` (the seeds), the teacher writes new ones "
        "(`num_instructions`), near-duplicates (ROUGE-L >= `similarity_threshold` with the pool) and malformed ones "
        "are dropped and counted, then it answers them -> sft records; "
        "`judge`: it compares a record's two `responses` by `judge_rubric` -> dpo pairs (chosen/rejected); `rewrite`: "
        "`rewrite_template` applied to each record's text -> records with the rewritten text.")
    num_samples: int = option(1, "answer: answers per prompt (use temperature > 0 for different ones).")
    temperature: float = option(0.7, "Sampling temperature of the requests.")
    max_tokens: int = option(512, "max_tokens of each request.")
    concurrency: int = option(8, "Requests in flight at once.")
    max_retries: int = option(5, "Retries of a request answered 429, 5xx or timed out (exponential backoff).")
    request_timeout: float = option(60.0, "Seconds before a request is abandoned (then retried).")
    max_total_tokens: int | None = option(
        None, "Stop sending requests once the answered ones used this many tokens (prompt + completion).")
    price_per_million_input: float | None = option(None, "Cost of a million prompt tokens (shown as spent).")
    price_per_million_output: float | None = option(None, "Cost of a million completion tokens.")
    num_instructions: int = option(50, "self_instruct: new instructions to write.")
    similarity_threshold: float = option(
        0.7, "self_instruct: a new instruction whose ROUGE-L with any instruction of the pool (seeds and those kept) "
        "reaches this is a near-duplicate.")
    self_instruct_template: str = option(
        "Here are some task instructions:\n{examples}\n\nWrite {count} new, different task instructions in the same "
        "style, one per line, numbered 1., 2., ...", "self_instruct: the request (fields: examples, count).")
    judge_rubric: str = option(DEFAULT_RUBRIC, "judge: the criterion the teacher compares by.")
    judge_template: str = option(DEFAULT_JUDGE_TEMPLATE, "judge: the request (fields: rubric, prompt, a, b).")
    responses_column: str = option("responses", "judge: the column holding each record's two answers.")
    rewrite_template: str = option(
        "Rewrite the following text in clear, simple English. Reply with the rewritten text only.\n\n{text}",
        "rewrite: the request (field: text, the record's `text_column`).")
    output_dir: str | None = option(
        None, "Where data.jsonl (appended record by record), dataset_info.json and stats.json are written; a rerun "
        "continues what is there.")
