"""A normalised conversation -> input ids and labels within `cutoff_len`, keeping whole turns where possible."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jinja2
from transformers import PreTrainedTokenizerBase

from lmforge.data.formats import SkipRecord
from lmforge.data.template import IGNORE_INDEX, TemplateMismatch, encode_conversation


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


@dataclass(frozen=True)
class LabelOptions:
    """How a conversation becomes labels (every field changes the encoded data, so all of it is in the cache key)."""

    cutoff_len: int
    mask_history: bool = False
    train_on_prompt: bool = False
    enable_thinking: bool = True


def prepare_messages(messages: list[dict], chat_template: str, enable_thinking: bool) -> list[dict]:
    """Reasoning as the template takes it: as `reasoning_content` where the template reads that field, otherwise
    folded into the content in `<think>` tags (the convention of reasoning models). Dropped when thinking is off."""
    if not any(m.get("reasoning_content") for m in messages):
        return messages
    out = []
    for message in messages:
        reasoning = message.get("reasoning_content")
        if reasoning:
            message = {k: v for k, v in message.items() if k != "reasoning_content"}
            if enable_thinking and "reasoning_content" in chat_template:
                message["reasoning_content"] = reasoning
            elif enable_thinking:
                message["content"] = f"<think>\n{reasoning}\n</think>\n\n{message['content']}"
        out.append(message)
    return out


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


class ConversationEncoder:
    """Batched `datasets.map` function: a column of JSON conversations -> input_ids, labels, truncated, and `skip`
    (the reason an example cannot be trained on, empty otherwise). Picklable, so it runs in worker processes."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, options: LabelOptions):
        self.tokenizer = tokenizer
        self.options = options

    def encode_one(self, example: dict[str, Any]) -> EncodedExample:
        o = self.options
        messages = prepare_messages(example["messages"], self.tokenizer.chat_template or "", o.enable_thinking)
        return encode_example(self.tokenizer, {**example, "messages": messages}, o.cutoff_len, o.mask_history,
                              o.train_on_prompt, enable_thinking=o.enable_thinking)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"input_ids": [], "labels": [], "truncated": [], "skip": []}
        for conversation in batch["conversation"]:
            try:
                encoded, skip = self.encode_one(json.loads(conversation)), ""
            except (SkipRecord, TemplateMismatch) as err:
                encoded, skip = EncodedExample([], []), str(err)
            except jinja2.TemplateError as err:  # the template's raise_exception(): e.g. roles it does not support
                encoded, skip = EncodedExample([], []), f"the chat template rejected it: {err}"
            out["input_ids"].append(encoded.input_ids)
            out["labels"].append(encoded.labels)
            out["truncated"].append(encoded.truncated)
            out["skip"].append(skip)
        return out
