"""Rewards for the online RL stages: Python reward functions (`module:function`) and reward models, summed.

A reward function follows TRL's convention, so functions written for TRL work unchanged:
`f(prompts: list[str], completions: list[str], **columns) -> list[float]`, where the columns are `reference` (the
dataset's answer, or None) and `messages` (each prompt as chat messages). The built-ins compare with the reference.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from typing import Any

from lmforge.errors import ConfigError

RewardFunction = Callable[..., list[float]]


def exact_match(prompts: list[str], completions: list[str], reference: list[str | None], **_: Any) -> list[float]:
    """1.0 where the completion equals the reference answer (surrounding whitespace ignored), else 0.0."""
    return [float(ref is not None and c.strip() == ref.strip()) for c, ref in zip(completions, reference, strict=True)]


def contains_reference(prompts: list[str], completions: list[str], reference: list[str | None],
                       **_: Any) -> list[float]:
    """1.0 where the reference answer appears in the completion, else 0.0."""
    return [float(ref is not None and ref.strip() in c) for c, ref in zip(completions, reference, strict=True)]


def token_f1(prompts: list[str], completions: list[str], reference: list[str | None], **_: Any) -> list[float]:
    """Word-level F1 between the completion and the reference answer (partial credit, as in extractive QA)."""
    from collections import Counter

    scores = []
    for completion, ref in zip(completions, reference, strict=True):
        predicted, gold = completion.split(), (ref or "").split()
        common = sum((Counter(predicted) & Counter(gold)).values())
        scores.append(0.0 if not common else 2 * common / (len(predicted) + len(gold)))
    return scores


def load_function(spec: str) -> RewardFunction:
    """`package.module:function` or `path/to/file.py:function`."""
    module_name, sep, name = spec.strip().rpartition(":")
    if not sep or not module_name or not name:
        raise ConfigError(f"Config error: reward function '{spec}' must be written 'module:function' or "
                          "'path/to/file.py:function'.")
    try:
        if module_name.endswith(".py"):
            if not os.path.isfile(module_name):
                raise ConfigError(f"Config error: reward function file '{module_name}' does not exist.")
            loader = importlib.util.spec_from_file_location(f"lmforge_reward_{abs(hash(module_name))}", module_name)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"Config error: could not import the reward function module '{module_name}': {err}") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigError(f"Config error: '{module_name}' has no function '{name}'.")
    return function


class Rewarder:
    """The summed score of every configured reward for a batch of completions."""

    def __init__(self, reward_funcs: str | None, reward_model: str | None, device: Any = None):
        self.functions = [(spec.strip(), load_function(spec)) for spec in (reward_funcs or "").split(",")
                          if spec.strip()]
        self.scorer = None
        if reward_model:
            from lmforge.model.reward import RewardScorer

            self.scorer = RewardScorer(reward_model, device=device)

    def __call__(self, prompts: list[str], completions: list[str], messages: list[list[dict]],
                 reference: list[str | None], conversation: list[list[dict]] | None = None
                 ) -> tuple[list[float], dict[str, float]]:
        """(total reward per completion, mean of each part: `reward/<name>`). With tools, `conversation` is each
        completion's exchange after the prompt (model turns and tool results; the completion is its last turn)."""
        total = [0.0] * len(completions)
        parts: dict[str, float] = {}
        extra = {"conversation": conversation} if conversation is not None else {}
        for name, function in self.functions:
            scores = function(prompts=prompts, completions=completions, reference=reference, messages=messages,
                              **extra)
            if len(scores) != len(completions):
                raise ConfigError(f"Config error: reward function '{name}' returned {len(scores)} scores for "
                                  f"{len(completions)} completions.")
            total = [t + float(s) for t, s in zip(total, scores, strict=True)]
            mean = sum(scores) / len(scores)
            parts[f"reward/{name.rpartition(':')[2]}"] = mean
            parts[f"reward/{name.rpartition(':')[2]}_std"] = (
                sum((float(s) - mean) ** 2 for s in scores) / max(len(scores) - 1, 1)) ** 0.5
        if self.scorer is not None:
            texts = [self.scorer.text_of({"messages": m + [{"role": "assistant", "content": c}]})
                     for m, c in zip(messages, completions, strict=True)]
            scores = self.scorer.score_texts(texts)
            total = [t + s for t, s in zip(total, scores, strict=True)]
            parts["reward/model"] = sum(scores) / len(scores)
        return total, parts
