"""Score each step of a reply with a process reward model saved by `stage: prm`.

The inputs are built exactly as training built them (`data/steps.py`): the prompt through the model's chat template
up to the assistant's turn, then each step followed by the saved separator; a step's score is the probability of
"correct" at its separator's last token. A reply given as one text is split at the separator first. As a reward
(grpo/ppo `reward_model`) a reply's step scores are reduced to one number: the weakest step (`min`, the usual choice:
one wrong step spoils the answer), the last one, their mean or their product.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch
from transformers import AutoModelForTokenClassification, PreTrainedTokenizerBase

from lmforge.data.formats import SkipRecord
from lmforge.data.steps import encode_steps, split_steps
from lmforge.data.template import prompt_ids
from lmforge.errors import ConfigError, DataError
from lmforge.model.build import PRM_FILE
from lmforge.model.scorer_loading import load_scorer

REDUCTIONS = ("min", "last", "mean", "prod")


def is_process_reward_model(path: str) -> bool:
    return os.path.isfile(os.path.join(path, PRM_FILE))


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ConfigError(f"Config error: the step reduction must be one of {', '.join(REDUCTIONS)}, got "
                          f"'{reduction}'.")
    return reduction


def reduce_steps(scores: list[float], reduction: str) -> float:
    """One reward for a reply from its step scores (0 for a reply with no step)."""
    check_reduction(reduction)
    if not scores:
        return 0.0
    if reduction == "min":
        return min(scores)
    if reduction == "last":
        return scores[-1]
    if reduction == "mean":
        return sum(scores) / len(scores)
    return math.prod(scores)


def load_process_reward_model(path: str, dtype: Any = "auto"
                              ) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, dict[str, Any]]:
    """(model, tokenizer, the settings training saved: `step_separator`, `enable_thinking`) of a `stage: prm`
    directory: a full model or a LoRA adapter (with its head) on the base it names."""
    with open(os.path.join(path, PRM_FILE), encoding="utf-8") as fh:
        saved = json.load(fh)
    model, tokenizer = load_scorer(path, AutoModelForTokenClassification, "AutoPeftModelForTokenClassification", 2,
                                   "process reward model", dtype)
    return model, tokenizer, saved


class StepScorer:
    """Scores the steps of replies to prompts with a process reward model."""

    def __init__(self, path: str, device: str | torch.device | None = None, batch_size: int = 16,
                 reduction: str = "min"):
        self.model, self.tokenizer, saved = load_process_reward_model(path)
        self.separator = saved["step_separator"]
        self.template_kwargs = {"enable_thinking": saved.get("enable_thinking", True)}
        self.device = torch.device(device) if device else next(self.model.parameters()).device
        self.model.to(self.device)
        self.batch_size = batch_size
        self.reduction = check_reduction(reduction)  # an unknown one fails here, before any scoring
        self.limit = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)

    def encode(self, prompt: list[dict], steps: list[str], prompt_tokens: list[int] | None = None
               ) -> tuple[list[int], list[int]]:
        """The ids and the step positions, as training encoded them (steps past the model's context are dropped);
        `prompt_tokens`: the prompt's ids when the caller has them."""
        prompt = prompt_tokens if prompt_tokens is not None else prompt_ids(self.tokenizer, prompt,
                                                                            **self.template_kwargs)
        try:
            ids, _, positions = encode_steps(prompt, steps, None, self.tokenizer, self.separator, self.limit)
        except SkipRecord:  # the prompt fills the context: no step can be scored
            return prompt, []
        return ids, positions

    @torch.no_grad()
    def step_scores(self, prompts: list[list[dict]], replies: list[list[str]]) -> list[list[float]]:
        """P(correct) of every step of every reply (a reply with no step: no score)."""
        rendered: dict[str, list[int]] = {}  # a group's completions share their prompt: rendered once

        def prompt_tokens(prompt: list[dict]) -> list[int]:
            key = json.dumps(prompt, sort_keys=True, default=str)
            if key not in rendered:
                rendered[key] = prompt_ids(self.tokenizer, prompt, **self.template_kwargs)
            return rendered[key]

        encoded: list[tuple[list[int], list[int]] | None] = [
            self.encode(prompt, steps, prompt_tokens(prompt)) if steps else None
            for prompt, steps in zip(prompts, replies, strict=True)]
        scores: list[list[float]] = [[] for _ in encoded]
        todo = [i for i, e in enumerate(encoded) if e is not None]
        pad = self.model.config.pad_token_id
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start:start + self.batch_size]
            length = max(len(encoded[i][0]) for i in batch)
            input_ids = torch.tensor([encoded[i][0] + [pad] * (length - len(encoded[i][0])) for i in batch],
                                     device=self.device)
            mask = torch.tensor([[1] * len(encoded[i][0]) + [0] * (length - len(encoded[i][0])) for i in batch],
                                device=self.device)
            correct = self.model(input_ids=input_ids, attention_mask=mask).logits.float().softmax(-1)[..., 1]
            for row, i in enumerate(batch):
                scores[i] = correct[row, encoded[i][1]].tolist()
        return scores

    def score_replies(self, prompts: list[list[dict]], completions: list[str]) -> list[float]:
        """One reward per reply: its steps (split at the separator) scored and reduced (`reduction`)."""
        replies = [split_steps(completion, self.separator) for completion in completions]
        return [reduce_steps(s, self.reduction) for s in self.step_scores(prompts, replies)]


def step_item(item: dict[str, Any], separator: str, where: str) -> tuple[list[dict], list[str]]:
    """A line of `lmforge score` input for a PRM: (prompt messages, steps). The prompt is `prompt` (text or
    messages) or `messages` (whose last assistant turn is the reply); the reply is `completions` (its steps, TRL's
    layout) or `completion` (a text split at the separator)."""
    prompt = item.get("prompt", item.get("messages"))
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise DataError(f"Data error: {where}: needs a 'prompt' (text or messages) or 'messages'.")
    reply = item.get("completions", item.get("completion"))
    if reply is None and prompt[-1].get("role") == "assistant":
        prompt, reply = prompt[:-1], prompt[-1].get("content")
    if isinstance(reply, str):
        reply = split_steps(reply, separator)
    if not isinstance(reply, list) or not reply or not all(isinstance(s, str) for s in reply):
        raise DataError(f"Data error: {where}: needs the reply as 'completions' (a list of step texts), "
                        "'completion' (text) or a last assistant message.")
    return prompt, reply
