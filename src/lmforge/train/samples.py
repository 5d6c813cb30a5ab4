"""Generate text at the end of a run: from `sample_prompts`, and for `do_predict` with `predict_with_generate`."""

from __future__ import annotations

import os

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lmforge.config.generation import GenerationArguments
from lmforge.jsonl import write_jsonl

SAMPLES_FILE = "samples.jsonl"


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]],
             gen: GenerationArguments, stop_ids: list[int] | None = None, batch_size: int = 8,
             seed: int = 42, progress: bool = False) -> list[str]:
    """Completions of token-id prompts, batched with left padding; decoding stops at any of `stop_ids`.
    Prompts are batched longest first (less padding); the completions come back in the prompts' order."""
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop = stop_ids or [tokenizer.eos_token_id]
    sampling = {"temperature": gen.temperature, "top_p": gen.top_p, "top_k": gen.top_k} if gen.do_sample else {}
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    completions: list[str] = [""] * len(prompts)
    for start in tqdm(range(0, len(prompts), batch_size), desc="generate", unit="batch", disable=not progress):
        indices = order[start: start + batch_size]
        batch = [prompts[i] for i in indices]
        width = max(len(p) for p in batch)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=model.device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=model.device)
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                max_new_tokens=gen.max_new_tokens, do_sample=gen.do_sample,
                                repetition_penalty=gen.repetition_penalty, pad_token_id=pad, eos_token_id=stop,
                                **sampling)
        for i, text in zip(indices, tokenizer.batch_decode(output[:, width:], skip_special_tokens=True), strict=True):
            completions[i] = text
    model.train(was_training)
    return completions


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
