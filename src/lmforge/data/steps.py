"""Step-level supervision for a process reward model: prompt + steps -> ids with one label per step.

The prompt is rendered with the chat template up to the assistant's turn (its generation prompt); each step is
tokenized on its own and followed by the separator's ids, and the step's label (1 correct, 0 not) sits on the
separator's last token; every other position is ignored. Tokenizing step by step (as TRL's PRM recipe did) keeps
the separator token-exact: the same ids wherever it falls, never merged with the step's last characters, so the
model is scored at exactly the positions it was trained on. Scoring (`model/reward.py`) builds its inputs with the
same function, from the steps of a saved example or of a completion split at the separator.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from lmforge.data.formats import SkipRecord
from lmforge.data.template import IGNORE_INDEX
from lmforge.errors import ConfigError

DEFAULT_STEP_SEPARATOR = "\n"


def separator_ids(tokenizer: PreTrainedTokenizerBase, separator: str) -> list[int]:
    ids = tokenizer(separator, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError(f"Config error: the step separator {separator!r} encodes to no token with this tokenizer.")
    return ids


def split_steps(completion: str, separator: str) -> list[str]:
    """A generated reply's steps: its text between separators, empty pieces dropped (a trailing separator, blank
    lines)."""
    return [step for step in completion.split(separator) if step.strip()]


def encode_steps(prompt: list[int], steps: list[str], labels: list[bool] | None, tokenizer: PreTrainedTokenizerBase,
                 separator: str, cutoff_len: int | None = None) -> tuple[list[int], list[int], list[int]]:
    """(input ids, labels, the position of each step's label) for `prompt` ids followed by the steps. Past
    `cutoff_len`, only the whole steps that fit are kept (SkipRecord if none does). Without `labels` (scoring) the
    label row marks the step positions with 1."""
    sep = separator_ids(tokenizer, separator)
    ids, out, positions = list(prompt), [IGNORE_INDEX] * len(prompt), []
    labels = labels if labels is not None else [True] * len(steps)
    for step, label in zip(steps, labels, strict=True):
        piece = tokenizer(step, add_special_tokens=False)["input_ids"] + sep
        if cutoff_len is not None and len(ids) + len(piece) > cutoff_len:
            break
        ids += piece
        out += [IGNORE_INDEX] * (len(piece) - 1) + [int(label)]
        positions.append(len(ids) - 1)
    if not positions:
        raise SkipRecord(f"no whole step fits within cutoff_len={cutoff_len} after the prompt ({len(prompt)} tokens)")
    return ids, out, positions


def step_example(tokenizer: PreTrainedTokenizerBase, example: dict[str, Any], prompt: list[int], separator: str,
                 cutoff_len: int, truncated: bool) -> dict[str, Any]:
    """One `steps` example's encoded columns (`encode.KIND_COLUMNS["steps"]`)."""
    ids, labels, positions = encode_steps(prompt, example["steps"], example["step_labels"], tokenizer, separator,
                                          cutoff_len)
    return {"input_ids": ids, "labels": labels, "truncated": truncated or len(positions) < len(example["steps"])}
