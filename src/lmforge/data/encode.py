"""A normalised conversation -> input ids and labels within `cutoff_len`, keeping whole turns where possible."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jinja2
import orjson
from transformers import PreTrainedTokenizerBase

from lmforge.data.formats import ExampleKind, SkipRecord
from lmforge.data.steps import DEFAULT_STEP_SEPARATOR, separator_ids, step_example
from lmforge.data.template import (
    IGNORE_INDEX,
    RenderedConversation,
    TemplateMismatch,
    encode_conversation,
    prompt_ids,
    render_conversation,
    span_labels,
    trained_spans,
)


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
    step_separator: str = DEFAULT_STEP_SEPARATOR  # `steps` examples (prm): what ends each step



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
    """Encode a whole conversation with the chat template (see `encode_replies` for truncation)."""
    return encode_replies(tokenizer, example["messages"], [[]], example.get("tools"), cutoff_len,
                          mask_history=mask_history, train_on_prompt=train_on_prompt, **template_kwargs)[0]


def _exchange_cuts(messages: list[dict]) -> list[list[dict]]:
    """The conversation with its oldest exchanges dropped, one more each time (the system message stays)."""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    return [system + turns[i:] for i, m in enumerate(turns) if m["role"] == "user" and i > 0]


def encode_replies(tokenizer: PreTrainedTokenizerBase, history: list[dict], replies: list[list[dict]],
                   tools: list | None, cutoff_len: int, mask_history: bool = False, train_on_prompt: bool = False,
                   **template_kwargs: Any) -> list[EncodedExample]:
    """`history` + each reply, encoded. With several replies (a preference pair) only the replies are trained.

    Too long: drop the oldest exchanges of the history (the system message stays), the same for every reply, until
    all fit; if the last exchange alone is too long, cut the tokens at `cutoff_len`. An example left with no trained
    token is skipped (SkipRecord), never trained on silently."""
    only_replies = any(replies)

    def encode(msgs: list[dict]) -> list[tuple[list[int], list[int]]]:
        return [encode_conversation(tokenizer, msgs + reply, tools=tools, mask_history=mask_history,
                                    train_on_prompt=train_on_prompt,
                                    reply_messages=len(reply) if only_replies else None, **template_kwargs)
                for reply in replies]

    encoded = encode(history)
    truncated = any(len(ids) > cutoff_len for ids, _ in encoded)
    if truncated:
        for shorter in _exchange_cuts(history):
            encoded = encode(shorter)
            if all(len(ids) <= cutoff_len for ids, _ in encoded):
                break
        encoded = [(ids[:cutoff_len], labels[:cutoff_len]) for ids, labels in encoded]
    examples = [EncodedExample(ids, labels, truncated) for ids, labels in encoded]
    if any(example.trained_tokens == 0 for example in examples):
        raise SkipRecord(_nothing_trained(truncated, cutoff_len))
    return examples


def _nothing_trained(truncated: bool, cutoff_len: int) -> str:
    return f"no assistant token fits within cutoff_len={cutoff_len}" if truncated else "no assistant token to train on"


def split_reply(messages: list[dict]) -> tuple[list[dict], list[dict]]:
    """A conversation -> (history, final reply): the reply is everything after the last user turn or tool result."""
    last = max(i for i, m in enumerate(messages) if m["role"] in ("user", "tool"))
    return messages[: last + 1], messages[last + 1:]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict], tools: list | None, cutoff_len: int,
                  **template_kwargs: Any) -> tuple[list[int], bool]:
    """The prompt's ids with the generation prompt; too long: the oldest exchanges are dropped (SkipRecord if the
    last turn alone does not fit)."""
    ids = prompt_ids(tokenizer, messages, tools, **template_kwargs)
    if len(ids) <= cutoff_len:
        return ids, False
    for shorter in _exchange_cuts(messages):
        ids = prompt_ids(tokenizer, shorter, tools, **template_kwargs)
        if len(ids) <= cutoff_len:
            return ids, True
    raise SkipRecord(f"the prompt alone is longer than cutoff_len={cutoff_len} ({len(ids)} tokens)")


# The columns an encoded example of each kind has (besides `conversation`, `record`, `source`).
KIND_COLUMNS: dict[str, list[str]] = {
    "sft": ["input_ids", "labels", "truncated"],
    "pair": ["chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels", "truncated"],
    "kto": ["input_ids", "labels", "kto_label", "truncated"],
    "prompt": ["input_ids", "truncated"],
    "steps": ["input_ids", "labels", "truncated"],  # labels: 1/0 at each step's last separator token
}


class ConversationEncoder:
    """Batched `datasets.map` function: a column of JSON examples (`formats.ExampleKind`) -> the kind's columns
    (`KIND_COLUMNS`) and `skip` (the reason an example cannot be trained on, empty otherwise). Picklable, so it runs
    in worker processes."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, options: LabelOptions, kind: ExampleKind = "sft"):
        self.tokenizer = tokenizer
        self.options = options
        self.kind = kind
        if kind == "steps":  # once, not as every record's skip
            separator_ids(tokenizer, options.step_separator)

    def _messages(self, messages: list[dict]) -> list[dict]:
        return prepare_messages(messages, self.tokenizer.chat_template or "", self.options.enable_thinking)

    def encode_one(self, example: dict[str, Any]) -> dict[str, Any]:
        text_only(example)
        o, tools = self.options, example.get("tools")
        kwargs = {"enable_thinking": o.enable_thinking}
        if self.kind == "prompt":
            ids, truncated = encode_prompt(self.tokenizer, self._messages(example["messages"]), tools, o.cutoff_len,
                                           **kwargs)
            return {"input_ids": ids, "truncated": truncated}
        if self.kind == "steps":
            prompt, truncated = encode_prompt(self.tokenizer, self._messages(example["messages"]), tools,
                                              o.cutoff_len, **kwargs)
            return step_example(self.tokenizer, example, prompt, o.step_separator, o.cutoff_len, truncated)
        if self.kind == "pair":
            chosen, rejected = encode_replies(
                self.tokenizer, self._messages(example["messages"]),
                [self._messages(example["chosen"]), self._messages(example["rejected"])], tools, o.cutoff_len,
                **kwargs)
            if chosen.input_ids == rejected.input_ids:
                raise SkipRecord("chosen and rejected are identical within cutoff_len")
            return {"chosen_input_ids": chosen.input_ids, "chosen_labels": chosen.labels,
                    "rejected_input_ids": rejected.input_ids, "rejected_labels": rejected.labels,
                    "truncated": chosen.truncated}
        if self.kind == "kto":  # the final reply is what is judged desirable or not: only it is trained
            history, reply = split_reply(self._messages(example["messages"]))
            encoded = encode_replies(self.tokenizer, history, [reply], tools, o.cutoff_len, **kwargs)[0]
            return {"input_ids": encoded.input_ids, "labels": encoded.labels, "kto_label": example["label"],
                    "truncated": encoded.truncated}
        encoded = encode_example(self.tokenizer, {**example, "messages": self._messages(example["messages"])},
                                 o.cutoff_len, o.mask_history, o.train_on_prompt, **kwargs)
        return {"input_ids": encoded.input_ids, "labels": encoded.labels, "truncated": encoded.truncated}

    def encode_batch(self, examples: list[dict[str, Any]]) -> list[dict[str, Any] | Exception]:
        """SFT examples rendered one by one, tokenized in one batched call (the fast tokenizer's threads), labelled
        from the offsets; the result of `encode_one` for each (an example longer than cutoff_len with older
        exchanges to drop goes through it; one without is cut here, as encode_replies would)."""
        o = self.options
        rendered: list[tuple[list[dict], RenderedConversation] | Exception] = []
        for example in examples:
            try:
                text_only(example)
                messages = self._messages(example["messages"])
                rendered.append((messages, render_conversation(self.tokenizer, messages, example.get("tools"),
                                                               enable_thinking=o.enable_thinking)))
            except ENCODE_ERRORS as err:
                rendered.append(err)
        texts = [r[1].text for r in rendered if not isinstance(r, Exception)]
        # the Rust tokenizer directly: the transformers wrapper would build masks and lists we do not use
        encodings = iter(self.tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
                         if texts else [])
        results: list[dict[str, Any] | Exception] = []
        for example, r in zip(examples, rendered, strict=True):
            if isinstance(r, Exception):
                results.append(r)
                continue
            messages, conversation = r
            encoding = next(encodings)
            ids = encoding.ids  # a new Python list at every access of the Rust encoding's property
            truncated = len(ids) > o.cutoff_len
            if truncated and _exchange_cuts(messages):
                results.append(self._guarded(example))  # drops old exchanges first
                continue
            labels = span_labels(ids, encoding.offsets, trained_spans(conversation, messages, o.mask_history))
            if truncated:
                ids, labels = ids[: o.cutoff_len], labels[: o.cutoff_len]
            if all(label == IGNORE_INDEX for label in labels):
                results.append(SkipRecord(_nothing_trained(truncated, o.cutoff_len)))
                continue
            results.append({"input_ids": ids, "labels": labels, "truncated": truncated})
        return results

    def _guarded(self, example: dict[str, Any]) -> dict[str, Any] | Exception:
        try:
            return self.encode_one(example)
        except ENCODE_ERRORS as err:
            return err

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        columns = KIND_COLUMNS[self.kind]
        out: dict[str, list] = {name: [] for name in [*columns, "skip"]}
        empty = {name: False if name in ("truncated", "kto_label") else [] for name in columns}
        examples = [_loads(conversation) for conversation in batch["conversation"]]
        if self.kind == "sft" and not self.options.train_on_prompt and self.tokenizer.is_fast:
            results = self.encode_batch(examples)
        else:
            results = [self._guarded(example) for example in examples]
        for result in results:
            encoded, skip = (empty, _skip_reason(result)) if isinstance(result, Exception) else (result, "")
            for name in columns:
                out[name].append(encoded[name])
            out["skip"].append(skip)
        return out


def text_only(example: dict[str, Any]) -> None:
    """A text model cannot see an example's images or videos: it is skipped, not trained on their placeholders."""
    for key in ("images", "videos"):
        if example.get(key):
            raise SkipRecord(f"it has {key} but the model takes text only")


def _loads(conversation: str) -> dict[str, Any]:
    """orjson where it can (3x the json module), json where orjson refuses (integers beyond 64 bits)."""
    try:
        return orjson.loads(conversation)
    except orjson.JSONDecodeError:
        return json.loads(conversation)


# What encoding one example may raise; each becomes that example's counted skip (a template that fails on odd
# content, e.g. tool arguments of an unexpected type, must not end the run).
ENCODE_ERRORS = (SkipRecord, TemplateMismatch, jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError,
                 IndexError, RecursionError)


def _skip_reason(err: Exception) -> str:
    if isinstance(err, jinja2.TemplateError):  # the template's raise_exception(): e.g. roles it does not support
        return f"the chat template rejected it: {err}"
    if isinstance(err, SkipRecord | TemplateMismatch):
        return str(err)
    return f"the chat template could not render it ({type(err).__name__}: {str(err)[:80]})"
