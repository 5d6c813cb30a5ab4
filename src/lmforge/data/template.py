"""Which characters and tokens of a rendered conversation are the assistant's: derived by rendering.

The model's own chat template (Jinja, via `apply_chat_template`) is the truth. We never keep a per-family table of
prefixes/suffixes, and never assume that rendering a prefix of a conversation gives a prefix of the full rendering
(templates drop reasoning from earlier turns, fold the system prompt into the first user turn, trim content, ...).

Method: render the conversation twice, once as is and once with every assistant content replaced by a unique
marker. The marked rendering splits into template scaffolding between markers; walking the real rendering through
that scaffolding gives each assistant content exactly as the template rendered it. The end-of-turn marker is what
the template emits right after an assistant content, up to and including the first special token (e.g. `<|im_end|>`,
`<|eot_id|>`, `</s>`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from lmforge.data.collate import IGNORE_INDEX


class TemplateMismatch(ValueError):
    """The rendering could not be walked through the template's scaffolding (a template that rewrites its
    surroundings depending on the content)."""


@dataclass
class RenderedConversation:
    text: str
    assistant_spans: list[tuple[int, int]] = field(default_factory=list)  # content + end-of-turn, in characters


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict], tools: list | None, chat_template: str | None,
            template_kwargs: dict[str, Any]) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, chat_template=chat_template, tokenize=False,
                                         add_generation_prompt=False, **template_kwargs)


def _special_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    tokens = set(tokenizer.all_special_tokens)
    for added in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(added, "special", False):
            tokens.add(added.content)
    return sorted((t for t in tokens if t), key=len, reverse=True)


def end_of_turn_text(tail: str, specials: list[str]) -> str:
    """The text after an assistant content that ends its turn: whitespace, then the first special token (`<|im_end|>`,
    `<|eot_id|>`, `</s>`, ...). Empty when the template emits none there."""
    pos = len(tail) - len(tail.lstrip(" \n\r\t"))
    match = next((s for s in specials if tail.startswith(s, pos)), None)
    return tail[: pos + len(match)] if match else ""


def render_conversation(tokenizer: PreTrainedTokenizerBase, messages: list[dict], tools: list | None = None,
                        chat_template: str | None = None, **template_kwargs: Any) -> RenderedConversation:
    """Render `messages` with the chat template and locate every assistant turn's trained characters."""
    text = _render(tokenizer, messages, tools, chat_template, template_kwargs)
    nonce = uuid.uuid4().hex[:12]
    markers = {}
    marked_messages = []
    for i, message in enumerate(messages):
        if message.get("role") == "assistant":
            marker = f"LMFORGEMARK{nonce}N{i}X"
            markers[i] = marker
            message = {**message, "content": marker}
            message.pop("reasoning_content", None)
        marked_messages.append(message)
    if not markers:
        return RenderedConversation(text)
    marked = _render(tokenizer, marked_messages, tools, chat_template, template_kwargs)

    pieces, rest = [], marked
    for marker in markers.values():  # in message order
        if marker not in rest:
            raise TemplateMismatch("the chat template did not render an assistant message's content")
        before, rest = rest.split(marker, 1)
        pieces.append(before)
    tail = rest
    specials = _special_tokens(tokenizer)

    spans, pos = [], 0
    for k, scaffold in enumerate(pieces):
        if not text.startswith(scaffold, pos):
            raise TemplateMismatch("the rendering differs from the template's scaffolding before an assistant turn")
        start = pos + len(scaffold)
        last = k + 1 == len(pieces)
        following = tail if last else pieces[k + 1]
        end = len(text) - len(tail) if last else text.find(following, start)
        if end < start or (last and not text.endswith(tail)):
            raise TemplateMismatch("the rendering differs from the template's scaffolding after an assistant turn")
        spans.append((start, end + len(end_of_turn_text(following, specials))))
        pos = end
    return RenderedConversation(text, spans)


def encode_conversation(tokenizer: PreTrainedTokenizerBase, messages: list[dict], tools: list | None = None,
                        chat_template: str | None = None, mask_history: bool = False, train_on_prompt: bool = False,
                        **template_kwargs: Any) -> tuple[list[int], list[int]]:
    """Token ids of the rendering (as `apply_chat_template(tokenize=True)` gives them) and labels: the ids where a
    token overlaps a trained assistant span, IGNORE_INDEX elsewhere."""
    rendered = render_conversation(tokenizer, messages, tools, chat_template, **template_kwargs)
    encoding = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    if train_on_prompt:
        return ids, list(ids)
    spans = rendered.assistant_spans[-1:] if mask_history else rendered.assistant_spans
    labels = [IGNORE_INDEX] * len(ids)
    span = 0  # offsets and spans are both in text order: one pass over the tokens
    for i, (start, end) in enumerate(offsets):
        while span < len(spans) and spans[span][1] <= start:
            span += 1
        if span < len(spans) and end > spans[span][0]:
            labels[i] = ids[i]
    return ids, labels
