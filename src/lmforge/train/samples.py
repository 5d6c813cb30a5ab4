"""Samples at the end of a run: `sample_prompts` completed by the trained model, written to samples.jsonl."""

from __future__ import annotations

import os

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lmforge.config.generation import GenerationArguments
from lmforge.jsonl import write_jsonl
from lmforge.model.inference import generate
from lmforge.runstatus import SAMPLES_FILE


def generate_samples(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, gen: GenerationArguments,
                     seed: int = 42, chat: bool = False, stop_ids: list[int] | None = None) -> list[dict]:
    """`sample_prompts` completed as raw text, or (`chat`) as the user turn of a conversation."""
    if chat:
        from lmforge.data.template import prompt_ids

        prompts = [prompt_ids(tokenizer, [{"role": "user", "content": p}]) for p in gen.sample_prompts]
    else:
        prompts = [tokenizer(p)["input_ids"] for p in gen.sample_prompts]
    completions = generate(model, tokenizer, prompts, gen, stop_ids, batch_size=1, seed=seed)
    return [{"prompt": p, "completion": c} for p, c in zip(gen.sample_prompts, completions, strict=True)]


def write_samples(output_dir: str, samples: list[dict]) -> str:
    path = os.path.join(output_dir, SAMPLES_FILE)
    write_jsonl(path, samples)
    return path
