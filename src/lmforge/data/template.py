"""Which characters and tokens of a rendered conversation are the assistant's: derived by rendering.

The model's own chat template (Jinja, via `apply_chat_template`) is the truth. We never keep a per-family table of
prefixes/suffixes, and never assume that rendering a prefix of a conversation gives a prefix of the full rendering
(templates drop reasoning from earlier turns, fold the system prompt into the first user turn, trim content, ...).

Method: render the conversation as is, then once per assistant message with only that message's content (and its
reasoning and tool calls) replaced by markers. Everything the two renderings share at the start and at the end is
independent of that message; what lies between, in the real rendering, is the message as the template rendered it
(trimmed, with or without its reasoning block, with its tool calls). Its end-of-turn marker is what the template
emits right after it, up to and including the first special token (`<|im_end|>`, `<|eot_id|>`, `</s>`, ...).

Trained = what the model must generate: at inference it continues `apply_chat_template(history,
add_generation_prompt=True)`, so where that rendering is a prefix of the full one and ends before the marked span,
the span starts at its end (a `<think>\n` opener, a tool call's `{"name": "`, Qwen3's empty think block on a last
turn are the model's to write; the empty think block a `enable_thinking=False` generation prompt writes is not).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import jinja2
import numpy as np
from transformers import PreTrainedTokenizerBase

from lmforge.data.collate import IGNORE_INDEX

# Invisible separator: not whitespace (survives `trim`) and practically never the first or last character of real
# content, so the shared prefix/suffix of the two renderings stops exactly at the content's edges.
_EDGE = "\u2063"


class TemplateMismatch(ValueError):
    """The rendering could not be attributed to the assistant messages (a template that renders one message's
    content in several places, or reorders messages)."""


@dataclass
class RenderedConversation:
    text: str
    assistant_spans: list[tuple[int, int]] = field(default_factory=list)  # content + end-of-turn, in characters


def render(tokenizer: PreTrainedTokenizerBase, messages: list[dict], tools: list | None = None,
           chat_template: str | None = None, add_generation_prompt: bool = False, **template_kwargs: Any) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, chat_template=chat_template, tokenize=False,
                                         add_generation_prompt=add_generation_prompt, **template_kwargs)


def special_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Every special token's text, longest first (so `<|im_end|>` wins over a shorter token it starts with)."""
    tokens = set(tokenizer.all_special_tokens)
    for added in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(added, "special", False):
            tokens.add(added.content)
    return sorted((t for t in tokens if t), key=len, reverse=True)


def end_of_turn_text(tail: str, specials: list[str], anything_before: bool = False) -> str:
    """The text after an assistant message that ends its turn: whitespace (or, after tool calls, whatever closes
    them), then the first special token. Empty when the template emits no special token there."""
    if anything_before:
        hits = [(tail.find(s), s) for s in specials if s in tail]
        if not hits:
            return ""
        pos, match = min(hits, key=lambda h: (h[0], -len(h[1])))
        return tail[: pos + len(match)]
    pos = len(tail) - len(tail.lstrip(" \n\r\t"))
    match = next((s for s in specials if tail.startswith(s, pos)), None)
    return tail[: pos + len(match)] if match else ""


def _marked(message: dict, nonce: str) -> dict:
    """The message with everything the assistant wrote replaced by markers."""
    out = {**message, "content": f"{_EDGE}{nonce}C{_EDGE}"}
    if message.get("reasoning_content"):
        out["reasoning_content"] = f"{_EDGE}{nonce}R{_EDGE}"
    if message.get("tool_calls"):
        out["tool_calls"] = [{"type": "function", "function": {"name": f"{_EDGE}{nonce}T{j}{_EDGE}", "arguments": {}}}
                             for j, _ in enumerate(message["tool_calls"])]
    return out


def _changed_region(text: str, variant: str) -> tuple[int, int]:
    """[start, end) of `text` outside the longest common prefix and suffix of `text` and `variant`."""
    start = _common_prefix(text, variant)
    limit = min(len(text), len(variant)) - start
    suffix = min(_common_prefix(text[::-1], variant[::-1]), limit)
    return start, len(text) - suffix


def _common_prefix(a: str, b: str) -> int:
    """Length of the common prefix, by bisection on slice comparisons (done in C, not character by character)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        mid = (low + high + 1) // 2
        if a[low:mid] == b[low:mid]:
            low = mid
        else:
            high = mid - 1
    return low


def render_conversation(tokenizer: PreTrainedTokenizerBase, messages: list[dict], tools: list | None = None,
                        chat_template: str | None = None, **template_kwargs: Any) -> RenderedConversation:
    """Render `messages` with the chat template and locate every assistant turn's trained characters."""
    text = render(tokenizer, messages, tools, chat_template, **template_kwargs)
    nonce = "LMF" + uuid.uuid4().hex[:10]
    specials = special_tokens(tokenizer)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        variant = render(tokenizer, messages[:i] + [_marked(message, nonce)] + messages[i + 1:], tools,
                         chat_template, **template_kwargs)
        if nonce not in variant:
            raise TemplateMismatch(f"the chat template does not render assistant message {i}")
        start, end = _changed_region(text, variant)
        end += len(end_of_turn_text(text[end:], specials, anything_before=bool(message.get("tool_calls"))))
        start = _generation_prompt_end(tokenizer, text, messages[:i], start, tools, chat_template, **template_kwargs)
        if spans and start < spans[-1][1]:
            raise TemplateMismatch(f"assistant message {i} is rendered before or inside an earlier one")
        spans.append((start, end))
    return RenderedConversation(text, spans)


def _generation_prompt_end(tokenizer: PreTrainedTokenizerBase, text: str, history: list[dict], start: int,
                           tools: list | None, chat_template: str | None, **template_kwargs: Any) -> int:
    """Where the model starts producing the turn after `history`: the end of the generation-prompt rendering of
    `history` when that is a prefix of `text` ending at or before `start` (so a reasoning opener such as `<think>\n`
    or a tool call's `{"name": "` that the template writes before the content is trained; for an [INST]-style
    template without a generation prompt, what follows `[/INST]`, e.g. Mistral's `[TOOL_CALLS]`); `start` otherwise
    (a template that renders earlier turns differently once a reply follows, or that refuses such a history)."""
    try:
        prompt = render(tokenizer, history, tools, chat_template, add_generation_prompt=True, **template_kwargs)
    except (jinja2.TemplateError, IndexError, KeyError, TypeError):  # e.g. "a conversation must start with a user"
        return start
    return len(prompt) if len(prompt) <= start and text.startswith(prompt) else start


def encode_conversation(tokenizer: PreTrainedTokenizerBase, messages: list[dict], tools: list | None = None,
                        chat_template: str | None = None, mask_history: bool = False, train_on_prompt: bool = False,
                        reply_messages: int | None = None, **template_kwargs: Any) -> tuple[list[int], list[int]]:
    """Token ids of the rendering (as `apply_chat_template(tokenize=True)` gives them) and labels: the ids where a
    token overlaps a trained assistant span, IGNORE_INDEX elsewhere. Trained: every assistant message, only the last
    one (`mask_history`), or only those among the last `reply_messages` messages (a preference pair's reply)."""
    if train_on_prompt:
        text = render(tokenizer, messages, tools, chat_template, **template_kwargs)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids, list(ids)
    rendered = render_conversation(tokenizer, messages, tools, chat_template, **template_kwargs)
    encoding = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoding["input_ids"]
    return ids, span_labels(ids, encoding["offset_mapping"], trained_spans(rendered, messages, mask_history,
                                                                          reply_messages))


def trained_spans(rendered: RenderedConversation, messages: list[dict], mask_history: bool = False,
                  reply_messages: int | None = None) -> list[tuple[int, int]]:
    """The assistant spans that are trained: all, the last one (`mask_history`), or those among the last
    `reply_messages` messages."""
    spans = rendered.assistant_spans
    if mask_history:
        return spans[-1:]
    if reply_messages is not None:
        positions = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
        return [s for s, i in zip(spans, positions, strict=True) if i >= len(messages) - reply_messages]
    return spans


def span_labels(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """Labels: the id where a token's characters overlap a span (spans sorted, disjoint), IGNORE_INDEX elsewhere."""
    if not spans or not ids:
        return [IGNORE_INDEX] * len(ids)
    offsets_array = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    starts, ends = np.asarray(spans, dtype=np.int64).T
    # the first span that ends after the token starts; the token is trained if it also ends after that span starts
    first = np.searchsorted(ends, offsets_array[:, 0], side="right")
    valid = first < len(spans)
    trained = valid & (offsets_array[:, 1] > starts[np.minimum(first, len(spans) - 1)])
    return np.where(trained, np.asarray(ids, dtype=np.int64), IGNORE_INDEX).tolist()


def prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict], tools: list | None = None,
               **template_kwargs: Any) -> list[int]:
    """Token ids of the conversation so far plus the template's generation prompt (what the model continues)."""
    text = render(tokenizer, messages, tools, add_generation_prompt=True, **template_kwargs)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """EOS plus the special token the chat template ends an assistant turn with (`<|im_end|>`, `<|eot_id|>`, ...),
    found by rendering a one-exchange conversation: generation must stop where training taught the model to."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
        rendered = render_conversation(tokenizer, messages)
        start, end = rendered.assistant_spans[0]
        for token in special_tokens(tokenizer):
            if rendered.text[start:end].endswith(token):
                token_id = tokenizer.convert_tokens_to_ids(token)
                if token_id not in ids:
                    ids.append(token_id)
                break
    return ids
