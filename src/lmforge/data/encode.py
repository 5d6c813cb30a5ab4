"""A normalised conversation -> input ids and labels within `cutoff_len`, keeping whole turns where possible."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from lmforge.data.formats import SkipRecord
from lmforge.data.template import IGNORE_INDEX, encode_conversation


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def encode_example(tokenizer: PreTrainedTokenizerBase, example: dict[str, Any], cutoff_len: int,
                   mask_history: bool = False, train_on_prompt: bool = False,
                   **template_kwargs: Any) -> EncodedExample:
    """Encode with the chat template. Too long: drop the oldest exchanges (the system message stays) until the rest
    fits; if the last exchange alone is too long, cut its tokens at `cutoff_len`. An example left with no trained
    token is skipped (SkipRecord), never trained on silently."""
    messages, tools = example["messages"], example.get("tools")

    def encode(msgs: list[dict]) -> tuple[list[int], list[int]]:
        return encode_conversation(tokenizer, msgs, tools=tools, mask_history=mask_history,
                                   train_on_prompt=train_on_prompt, **template_kwargs)

    ids, labels = encode(messages)
    truncated = len(ids) > cutoff_len
    if truncated:
        system = messages[:1] if messages[0]["role"] == "system" else []
        turns = messages[len(system):]
        exchange_starts = [i for i, m in enumerate(turns) if m["role"] == "user"][1:]
        for start in exchange_starts:
            ids, labels = encode(system + turns[start:])
            if len(ids) <= cutoff_len:
                break
        ids, labels = ids[:cutoff_len], labels[:cutoff_len]
    example_out = EncodedExample(ids, labels, truncated)
    if example_out.trained_tokens == 0:
        raise SkipRecord(f"no assistant token fits within cutoff_len={cutoff_len}" if truncated
                         else "no assistant token to train on")
    return example_out
