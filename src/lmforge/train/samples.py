"""Generate text from `sample_prompts` at the end of a run."""

from __future__ import annotations

import json
import os

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lmforge.config.generation import GenerationArguments

SAMPLES_FILE = "samples.jsonl"


@torch.no_grad()
def generate_samples(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, gen: GenerationArguments,
                     seed: int = 42) -> list[dict]:
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    samples = []
    for prompt in gen.sample_prompts:
        inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
        output = model.generate(
            **inputs, max_new_tokens=gen.max_new_tokens, do_sample=gen.do_sample,
            temperature=gen.temperature if gen.do_sample else None, top_p=gen.top_p if gen.do_sample else None,
            top_k=gen.top_k if gen.do_sample else None, repetition_penalty=gen.repetition_penalty,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new_tokens = output[0, inputs["input_ids"].shape[1]:]
        samples.append({"prompt": prompt, "completion": tokenizer.decode(new_tokens, skip_special_tokens=True)})
    model.train(was_training)
    return samples


def write_samples(output_dir: str, samples: list[dict]) -> str:
    path = os.path.join(output_dir, SAMPLES_FILE)
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
    return path
