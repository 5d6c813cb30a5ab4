"""Score text with a reward model saved by `stage: rm` (or any one-output sequence-classification model), or the
steps of replies with a process reward model saved by `stage: prm` (`model/process_reward.py`)."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedTokenizerBase

from lmforge.data.template import render
from lmforge.errors import ConfigError, DataError
from lmforge.jsonl import write_jsonl
from lmforge.model.process_reward import StepScorer, is_process_reward_model, reduce_steps, step_item
from lmforge.model.scorer_loading import load_scorer


def load_reward_model(path: str, dtype: Any = "auto") -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """A reward model directory: a full model, or a LoRA adapter (with its head) on the base it names."""
    if not os.path.isfile(os.path.join(path, "adapter_config.json")):
        try:
            architectures = AutoConfig.from_pretrained(path).architectures or []
        except (OSError, ValueError) as err:
            raise ConfigError(f"Config error: could not load a reward model from '{path}': "
                              f"{str(err).splitlines()[0]}") from None
        if not any(a.endswith("ForSequenceClassification") for a in architectures):
            raise ConfigError(f"Config error: '{path}' is not a reward model (its architecture is "
                              f"{', '.join(architectures) or 'unknown'}); train one with 'stage: rm'.")
    return load_scorer(path, AutoModelForSequenceClassification, "AutoPeftModelForSequenceClassification", 1,
                       "reward model", dtype)


class RewardScorer:
    """Scores conversations (rendered with the reward model's own chat template, as in training) or raw texts."""

    def __init__(self, path: str, device: str | torch.device | None = None, batch_size: int = 16):
        self.model, self.tokenizer = load_reward_model(path)
        self.device = torch.device(device) if device else next(self.model.parameters()).device
        self.model.to(self.device)
        self.batch_size = batch_size

    def score_replies(self, prompts: list[list[dict]], completions: list[str]) -> list[float]:
        """One reward per reply to its prompt: the conversation rendered with the model's template and scored."""
        return self.score_texts([self.text_of({"messages": m + [{"role": "assistant", "content": c}]})
                                 for m, c in zip(prompts, completions, strict=True)])

    def text_of(self, item: dict[str, Any]) -> str:
        if "messages" in item:
            return render(self.tokenizer, item["messages"], item.get("tools"))
        return item["text"]

    @torch.no_grad()
    def score_texts(self, texts: list[str]) -> list[float]:
        scores: list[float] = []
        pad = self.model.config.pad_token_id
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start:start + self.batch_size]
            ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in batch]
            length = max(len(x) for x in ids)
            input_ids = torch.tensor([x + [pad] * (length - len(x)) for x in ids], device=self.device)
            mask = torch.tensor([[1] * len(x) + [0] * (length - len(x)) for x in ids], device=self.device)
            scores += self.model(input_ids=input_ids, attention_mask=mask).logits[:, 0].float().tolist()
        return scores


def reward_scorer(path: str, device: Any = None, reduction: str = "min") -> RewardScorer | StepScorer:
    """The scorer a reward model directory needs: a process reward model's steps reduced to one reward
    (`reduction`), or an outcome reward model's score."""
    if is_process_reward_model(path):
        return StepScorer(path, device=device, reduction=reduction)
    return RewardScorer(path, device=device)


def read_items(path: str, steps: bool = False) -> list[dict[str, Any]]:
    """JSON lines, each with `text` (already formatted) or `messages` (a conversation to render); with `steps`
    (a process reward model's input) any JSON object, read by `process_reward.step_item`."""
    items = []
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"Data error: {path} line {n}: not valid JSON ({err.msg}).") from None
                if not isinstance(item, dict) or not (steps or isinstance(item.get("text"), str)
                                                      or isinstance(item.get("messages"), list)):
                    raise DataError(f"Data error: {path} line {n}: needs a 'text' string or a 'messages' list.")
                items.append(item)
    except FileNotFoundError:
        raise DataError(f"Data error: '{path}' does not exist.") from None
    if not items:
        raise DataError(f"Data error: '{path}' holds no records.")
    return items


def score_file(model_dir: str, input_path: str, output_path: str | None = None, batch_size: int = 16,
               reduction: str | None = None) -> list[dict[str, Any]]:
    """Score every line of `input_path`: `{"score": ...}` for each (a process reward model's also has
    `step_scores`, and `score` is their `reduction`, the weakest step by default); the lines with those fields
    written to `output_path` (atomically). Returned with `reply`, what was scored in short, for the console."""
    if is_process_reward_model(model_dir):
        items = read_items(input_path, steps=True)
        reduction = reduction or "min"
        scorer = StepScorer(model_dir, batch_size=batch_size, reduction=reduction)
        parsed = [step_item(item, scorer.separator, f"{input_path} line {n}") for n, item in enumerate(items, 1)]
        steps = scorer.step_scores([p for p, _ in parsed], [r for _, r in parsed])
        results = [{"score": reduce_steps(s, reduction), "step_scores": s} for s in steps]
    else:
        if reduction is not None:
            raise ConfigError(f"Config error (command line): --reduction applies to a process reward model "
                              f"(stage: prm); '{model_dir}' scores whole replies.")
        items = read_items(input_path)
        outcome = RewardScorer(model_dir, batch_size=batch_size)
        results = [{"score": s} for s in outcome.score_texts([outcome.text_of(item) for item in items])]
    if output_path:
        write_jsonl(output_path, [{**item, **r} for item, r in zip(items, results, strict=True)])
    return [{**r, "reply": reply_of(item)} for item, r in zip(items, results, strict=True)]


def reply_of(item: dict[str, Any], width: int = 80) -> str:
    """What was scored, shortened for a console line: the last message, the completion (its steps joined) or the
    end of a formatted text."""
    if isinstance(item.get("completions"), list):
        reply = " | ".join(map(str, item["completions"]))
    elif isinstance(item.get("completion"), str):
        reply = item["completion"]
    elif isinstance(item.get("messages"), list) and item["messages"] and isinstance(item["messages"][-1], dict):
        content = item["messages"][-1].get("content", "")
        reply = content if isinstance(content, str) else " ".join(
            part.get("text", "") for part in content if isinstance(part, dict))
    else:
        reply = str(item.get("text", ""))[-width:]
    reply = " ".join(reply.split())
    return reply if len(reply) <= width else reply[: width - 1] + "…"
