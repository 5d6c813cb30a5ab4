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

import functools
import itertools
import re
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jinja2
import numpy as np
from transformers import PreTrainedTokenizerBase

from lmforge.data.collate import IGNORE_INDEX

# Invisible separator: not whitespace (survives `trim`) and practically never the first or last character of real
# content, so the shared prefix/suffix of the two renderings stops exactly at the content's edges.
_EDGE = "\u2063"


# Random per process: markers (counted per conversation; uuid4 per call costs an os.urandom each) and slots carry it.
_PROCESS_NONCE = uuid.uuid4().hex[:10]
_MARKER_COUNT = itertools.count()


class TemplateMismatch(ValueError):
    """The rendering could not be attributed to the assistant messages (a template that renders one message's
    content in several places, or reorders messages)."""


@dataclass
class RenderedConversation:
    text: str
    assistant_spans: list[tuple[int, int]] = field(default_factory=list)  # content + end-of-turn, in characters


def render(tokenizer: PreTrainedTokenizerBase, messages: list[dict], tools: list | None = None,
           chat_template: str | None = None, add_generation_prompt: bool = False, **template_kwargs: Any) -> str:
    """`tokenizer.apply_chat_template(messages, tokenize=False, ...)`, without its per-call overhead: the template
    compiled once (by transformers, with its filters and globals) and rendered with the same variables. Data read from
    JSON is plain already, so the conversion of rich objects apply_chat_template does is skipped; anything else (tools
    given as functions) goes through apply_chat_template itself. A test pins the two to the same output."""
    library = _template_library()
    if library is None or (tools is not None and not all(isinstance(t, dict) for t in tools)):
        return tokenizer.apply_chat_template(messages, tools=tools, chat_template=chat_template, tokenize=False,
                                             add_generation_prompt=add_generation_prompt, **template_kwargs)
    compile_template, normalize, alias_reasoning = library
    if not messages:
        raise ValueError("Cannot apply chat template to an empty conversation. Provide at least one message.")
    template = compile_template(tokenizer.get_chat_template(chat_template, tools))
    return template.render(messages=alias_reasoning(normalize(messages)), tools=tools, documents=None,
                           add_generation_prompt=add_generation_prompt,
                           **{**tokenizer.special_tokens_map, **template_kwargs})


@functools.cache
def _template_library() -> tuple[Callable, Callable, Callable] | None:
    """The pieces of transformers' apply_chat_template that `render` runs: the (cached) template compiler, the
    message normalisation (None values dropped) and the reasoning aliases; None where a release no longer has them
    under these names (then `render` calls apply_chat_template)."""
    try:
        from transformers.utils.chat_template_utils import (
            _alias_reasoning_fields,
            _compile_jinja_template,
            _normalize_chat_messages,
        )
    except ImportError:
        return None
    return _compile_jinja_template, _normalize_chat_messages, _alias_reasoning_fields


_SPECIALS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def special_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Every special token's text, longest first (so `<|im_end|>` wins over a shorter token it starts with). Kept per
    tokenizer while its vocabulary size is unchanged: labelling asks once per conversation, and transformers rebuilds
    the list from the added-token table on every call."""
    size = len(tokenizer)
    cached = _SPECIALS.get(tokenizer)
    if cached is None or cached[0] != size:
        cached = _SPECIALS[tokenizer] = (size, _special_tokens(tokenizer))
    return cached[1]


def _special_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
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
    marker = f"{_EDGE}{nonce}C{_EDGE}"
    content = message.get("content")
    if isinstance(content, list):  # content parts (multimodal templates): the text parts are the assistant's
        parts = [p for p in content if not (isinstance(p, dict) and p.get("type") == "text")]
        out = {**message, "content": [*parts, {"type": "text", "text": marker}]}
    else:
        out = {**message, "content": marker}
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
    renderings = _Renderings(tokenizer, messages, tools, chat_template, template_kwargs)
    renderings = _ShapeFilled.when_exact(renderings, text) or renderings
    nonce = f"LMF{_PROCESS_NONCE}{next(_MARKER_COUNT)}"
    specials = special_tokens(tokenizer)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        variant = renderings.marked(i, nonce)
        if nonce not in variant:
            raise TemplateMismatch(f"the chat template does not render assistant message {i}")
        start, end = _changed_region(text, variant)
        end += len(end_of_turn_text(text[end:], specials, anything_before=bool(message.get("tool_calls"))))
        start = _generation_prompt_end(renderings, text, i, start)
        if spans and start < spans[-1][1]:
            raise TemplateMismatch(f"assistant message {i} is rendered before or inside an earlier one")
        spans.append((start, end))
    return RenderedConversation(text, spans)


# What rendering a history with a generation prompt may raise when the template refuses that history (e.g. "a
# conversation must start with a user message"): the reply then starts where its marked span does.
_REFUSED_HISTORY = (jinja2.TemplateError, IndexError, KeyError, TypeError)


def _generation_prompt_end(renderings: _Renderings, text: str, i: int, start: int) -> int:
    """Where the model starts producing message `i`: the end of the generation-prompt rendering of the history before
    it when that is a prefix of `text` ending at or before `start` (so a reasoning opener such as `<think>\n` or a
    tool call's `{"name": "` that the template writes before the content is trained; for an [INST]-style template
    without a generation prompt, what follows `[/INST]`, e.g. Mistral's `[TOOL_CALLS]`); `start` otherwise (a
    template that renders earlier turns differently once a reply follows, or that refuses such a history)."""
    try:
        prompt = renderings.generation_prompt(i)
    except _REFUSED_HISTORY:
        return start
    return len(prompt) if len(prompt) <= start and text.startswith(prompt) else start


class _Renderings:
    """The renderings labelling a conversation needs besides its own: with one assistant message marked, and the
    history before a message with the generation prompt. Rendered by the template."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, messages: list[dict], tools: list | None,
                 chat_template: str | None, template_kwargs: dict[str, Any]):
        self.tokenizer, self.messages, self.tools = tokenizer, messages, tools
        self.chat_template, self.template_kwargs = chat_template, template_kwargs

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return render(self.tokenizer, messages, self.tools, self.chat_template,
                      add_generation_prompt=add_generation_prompt, **self.template_kwargs)

    def marked(self, i: int, nonce: str) -> str:
        messages = self.messages
        return self.render(messages[:i] + [_marked(messages[i], nonce)] + messages[i + 1:])

    def generation_prompt(self, i: int) -> str:
        return self.render(self.messages[:i], add_generation_prompt=True)


# Slots: stand-ins for the text of every message's content and reasoning, unique to this process. The template
# renders a conversation's *shape* (roles, other fields, tools) with slots once; any conversation of that shape is
# that rendering with its texts put into the slots, wherever the template places texts verbatim.
_SLOT_FIELDS = {"content": "C", "reasoning_content": "R"}
_SLOT_NONCE = "LMS" + _PROCESS_NONCE
_SLOT = re.compile(f"{_EDGE}{_SLOT_NONCE}(\\d+[CR]){_EDGE}")


def _slot(i: int, code: str) -> str:
    return f"{_EDGE}{_SLOT_NONCE}{i}{code}{_EDGE}"


class _ShapeFilled(_Renderings):
    """The same renderings without running the template: renderings of the conversation's shape (cached per shape,
    template and variables) with the texts filled in.

    Used only when the conversation's own rendering equals its shape's rendering filled with its texts, i.e. the
    template placed every text verbatim and nothing it rendered depended on a text (Qwen3 splitting a content at
    `</think>`, a `trim`med content, a content-dependent branch all make the two differ and leave the conversation to
    the template). The variants differ from the conversation only in the texts of one message (markers, which like
    the slots are plain strings), and the histories are prefixes of it, so they are filled the same way. A test
    compares both ways on every demo dataset and several published templates."""

    _cache: dict[tuple, list[str] | Exception] = {}
    _CACHE_SIZE = 4096

    def __init__(self, renderings: _Renderings, shape: tuple):
        super().__init__(renderings.tokenizer, renderings.messages, renderings.tools, renderings.chat_template,
                         renderings.template_kwargs)
        self.shape = shape
        self.texts = {f"{i}{code}": m[name] for i, m in enumerate(self.messages)
                      for name, code in _SLOT_FIELDS.items() if isinstance(m.get(name), str)}
        self.context = (self.tokenizer.get_chat_template(self.chat_template, self.tools),
                        repr(self.tokenizer.special_tokens_map), repr(sorted(self.template_kwargs.items())),
                        repr(self.tools))

    @classmethod
    def when_exact(cls, renderings: _Renderings, text: str) -> _ShapeFilled | None:
        """Shape-filled renderings of the conversation, if its shape filled with its texts is `text`."""
        shape = _shape(renderings.messages)
        if shape is None:
            return None
        filled = cls(renderings, shape)
        try:
            pieces = filled._pieces(len(renderings.messages), add_generation_prompt=False)
        except Exception:  # noqa: BLE001 - the shape does not render: the conversation's own rendering decides
            return None
        return filled if _fill(pieces, filled.texts) == text else None

    def _pieces(self, count: int, add_generation_prompt: bool) -> list[str]:
        """The rendering of the first `count` messages' shape, split at its slots (cached)."""
        key = (self.context, self.shape[:count], add_generation_prompt)
        pieces = self._cache.get(key)
        if pieces is None:
            slotted = [{k: _slot(i, _SLOT_FIELDS[k]) if k in _SLOT_FIELDS and isinstance(v, str) else v
                        for k, v in m.items()} for i, m in enumerate(self.messages[:count])]
            try:
                pieces = _SLOT.split(self.render(slotted, add_generation_prompt))
            except Exception as err:  # noqa: BLE001 - kept: the same shape raises the same way
                pieces = err
            if len(self._cache) >= self._CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = pieces
        if isinstance(pieces, Exception):
            raise pieces.with_traceback(None)
        return pieces

    def marked(self, i: int, nonce: str) -> str:
        message = self.messages[i]
        if message.get("tool_calls") or not isinstance(message.get("content"), str) or (
                message.get("reasoning_content") and not isinstance(message["reasoning_content"], str)):
            return super().marked(i, nonce)  # the marked message has another shape
        marker = _marked(message, nonce)
        texts = {**self.texts, f"{i}C": marker["content"]}
        if message.get("reasoning_content"):
            texts[f"{i}R"] = marker["reasoning_content"]
        return _fill(self._pieces(len(self.messages), add_generation_prompt=False), texts)

    def generation_prompt(self, i: int) -> str:
        return _fill(self._pieces(i, add_generation_prompt=True), self.texts)


def _shape(messages: list[dict]) -> tuple | None:
    """A conversation without the text of its contents and reasoning (hashable), None if it is not a list of
    dicts or empty."""
    if not messages:
        return None
    shape = []
    for m in messages:
        if not isinstance(m, dict):
            return None
        shape.append(tuple((k, None) if k in _SLOT_FIELDS and isinstance(v, str) else
                           (k, v if v is None or isinstance(v, str | int | float | bool) else repr(v))
                           for k, v in m.items()))
    return tuple(shape)


def _fill(pieces: list[str], texts: dict[str, str]) -> str:
    """A shape's rendering (split at its slots: text, slot, text, ...) with the texts put in."""
    out = [pieces[0]]
    for j in range(1, len(pieces), 2):
        out.append(texts[pieces[j]])
        out.append(pieces[j + 1])
    return "".join(out)


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
        try:
            rendered = render_conversation(tokenizer, messages)
        except (TemplateMismatch, *_REFUSED_HISTORY):  # a multimodal template that reads content parts only
            rendered = render_conversation(tokenizer, [{**m, "content": [{"type": "text", "text": m["content"]}]}
                                                       for m in messages])
        start, end = rendered.assistant_spans[0]
        for token in special_tokens(tokenizer):
            if rendered.text[start:end].endswith(token):
                token_id = tokenizer.convert_tokens_to_ids(token)
                if token_id not in ids:
                    ids.append(token_id)
                break
    return ids
