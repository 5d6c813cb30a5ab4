"""Multimodal conversations -> the ids the model's own processor produces, and labels derived by rendering.

The text rule holds unchanged: the processor's chat template renders the conversation (messages as content parts,
images where their placeholders were), `template.render_conversation` locates every assistant turn's characters, and
the rendering's tokens get labels from them. The processor then expands each image (video) into its tokens and
tokenizes; those ids are the example's, exactly what `processor.apply_chat_template(..., tokenize=True)` gives for
the same messages and images. Labels move onto them by aligning the two token sequences (the expansion inserts media
tokens, and around them text the tokenizer may merge differently, e.g. Gemma 3's blank lines): a token outside an
expansion keeps its label, media tokens are never trained, and every trained token must come through unchanged
(otherwise the example is a TemplateMismatch skip, never a guess).

Pixels are not stored: images are loaded and processed again by the collator (in the data-loader workers), with the
same bounds, so the cache holds ids, labels and file references only.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from lmforge.data import media
from lmforge.data.encode import (
    ENCODE_ERRORS,
    KIND_COLUMNS,
    LabelOptions,
    _exchange_cuts,
    _loads,
    _nothing_trained,
    _skip_reason,
    prepare_messages,
)
from lmforge.data.skips import SkipRecord
from lmforge.data.template import (
    IGNORE_INDEX,
    TemplateMismatch,
    render,
    render_conversation,
    span_labels,
    trained_spans,
)

MEDIA_COLUMNS = ["images", "videos"]
# processor outputs that are the text itself; any other output as long as the ids is a per-token input the model
# takes (Gemma 3's token_type_ids marking image tokens) and is stored beside them
_TEXT_OUTPUTS = {"input_ids", "attention_mask", "offset_mapping"}


@dataclass(frozen=True)
class MediaOptions:
    """How images and videos are read (DataArguments' image_*/video_* keys)."""

    image_max_pixels: int = 768 * 768
    image_min_pixels: int = 32 * 32
    video_fps: float = 2.0
    video_maxlen: int = 128
    video_max_pixels: int = 256 * 256

    def image(self, ref: str) -> Any:
        return media.load_image(ref, self.image_max_pixels, self.image_min_pixels)

    def video(self, ref: str) -> list:
        return media.load_video(ref, self.video_fps, self.video_maxlen, self.video_max_pixels,
                                self.image_min_pixels)


def media_token_ids(processor: Any) -> set[int]:
    """The ids of every media placeholder/expansion token the processor knows (never trained, never cut through)."""
    tokenizer = processor.tokenizer
    ids: set[int] = set()
    for owner in (processor, tokenizer):
        for name in ("image_token_id", "video_token_id", "audio_token_id"):
            value = getattr(owner, name, None)
            if isinstance(value, int):
                ids.add(value)
        for name in ("image_token", "video_token", "boi_token", "eoi_token"):
            token = getattr(owner, name, None)
            if isinstance(token, str) and token:
                token_id = tokenizer.convert_tokens_to_ids(token)
                if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
                    ids.add(token_id)
    return ids


def per_token_outputs(processor: Any) -> list[str]:
    """The processor's per-token outputs besides ids and mask (found by processing one word)."""
    out = processor(text=["x"])
    length = len(out["input_ids"][0])
    return sorted(k for k, v in out.items() if k not in _TEXT_OUTPUTS and len(v[0]) == length)


def carry_labels(text_ids: list[int], text_labels: list[int], ids: list[int], never: set[int]) -> list[int]:
    """Labels of the rendering's tokens moved onto the processor's ids (see the module docstring)."""
    labels = [IGNORE_INDEX] * len(ids)
    matcher = difflib.SequenceMatcher(None, text_ids, ids, autojunk=False)
    carried = 0
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            label = text_labels[block.a + k]
            if label != IGNORE_INDEX and ids[block.b + k] not in never:
                labels[block.b + k] = label
                carried += 1
    expected = sum(label != IGNORE_INDEX and token not in never
                   for token, label in zip(text_ids, text_labels, strict=True))
    if carried != expected:
        raise TemplateMismatch("the processor changed tokens of an assistant turn while expanding media")
    return labels


def as_parts(messages: list[dict]) -> list[dict]:
    """Messages with string content -> content parts (text, image, video), as processors' templates take them."""
    return [{**m, "content": media.content_parts(m["content"])} if isinstance(m.get("content"), str) else m
            for m in messages]


class MultimodalEncoder:
    """Batched `datasets.map` function for examples with images (and text-only ones of the same run): the kind's
    columns, the media columns, the processor's per-token outputs, and `skip`. Kinds: sft and pair."""

    def __init__(self, processor: Any, options: LabelOptions, media_options: MediaOptions, kind: str = "sft"):
        if kind not in ("sft", "pair", "prompt"):
            raise ValueError(f"multimodal data is trained by the sft and dpo stages, not as '{kind}' examples")
        self.processor, self.tokenizer = processor, processor.tokenizer
        self.options, self.media_options, self.kind = options, media_options, kind
        self.never = media_token_ids(processor)
        self.extras = per_token_outputs(processor)

    @property
    def columns(self) -> list[str]:
        sides = ["chosen_", "rejected_"] if self.kind == "pair" else [""]
        return [*KIND_COLUMNS[self.kind], *MEDIA_COLUMNS, *(f"{s}{k}" for s in sides for k in self.extras)]

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        columns = self.columns
        out: dict[str, list] = {name: [] for name in [*columns, "skip"]}
        for conversation in batch["conversation"]:
            try:
                result, skip = self.encode_one(_loads(conversation)), ""
            except ENCODE_ERRORS as err:
                result, skip = {}, _skip_reason(err)
            for name in columns:
                out[name].append(result.get(name, False if name == "truncated" else []))
            out["skip"].append(skip)
        return out

    def encode_one(self, example: dict[str, Any]) -> dict[str, Any]:
        media.check_counts(example)
        refs = {key: list(example.get(key) or []) for key in MEDIA_COLUMNS}
        if refs["videos"] and getattr(self.processor, "video_processor", None) is None:
            raise SkipRecord("it has videos but the model takes no video")
        messages = self._messages(example["messages"])
        if self.kind == "prompt":  # what the model answers (eval task=generate): ids with the generation prompt
            return self._prompt(messages, refs, example.get("tools"))
        if self.kind == "pair":
            replies = [self._messages(example["chosen"]), self._messages(example["rejected"])]
        else:
            replies = [[]]
        encoded, refs, truncated = self._fit(messages, replies, refs, example.get("tools"))
        if self.kind == "sft":
            (ids, labels, extras), = encoded
            return {"input_ids": ids, "labels": labels, "truncated": truncated, **refs, **extras}
        (c_ids, c_labels, c_extras), (r_ids, r_labels, r_extras) = encoded
        if c_ids == r_ids:
            raise SkipRecord("chosen and rejected are identical within cutoff_len")
        return {"chosen_input_ids": c_ids, "chosen_labels": c_labels, "rejected_input_ids": r_ids,
                "rejected_labels": r_labels, "truncated": truncated, **refs,
                **{f"chosen_{k}": v for k, v in c_extras.items()},
                **{f"rejected_{k}": v for k, v in r_extras.items()}}

    def _prompt(self, messages: list[dict], refs: dict[str, list[str]], tools: list | None) -> dict[str, Any]:
        text = render(self.tokenizer, as_parts(messages), tools, add_generation_prompt=True,
                      enable_thinking=self.options.enable_thinking)
        out = process(self.processor, text, *self._load(refs))
        ids = [int(t) for t in out["input_ids"][0]]
        if len(ids) > self.options.cutoff_len:
            raise SkipRecord(f"the prompt with its images is longer than cutoff_len={self.options.cutoff_len} "
                             f"({len(ids)} tokens)")
        return {"input_ids": ids, "truncated": False, **refs, **{k: [int(t) for t in out[k][0]] for k in self.extras}}

    def _load(self, refs: dict[str, list[str]]) -> tuple[list, list]:
        return [self.media_options.image(r) for r in refs["images"]], [self.media_options.video(r)
                                                                       for r in refs["videos"]]

    def _messages(self, messages: list[dict]) -> list[dict]:
        return prepare_messages(messages, self.tokenizer.chat_template or "", self.options.enable_thinking)

    def _fit(self, history: list[dict], replies: list[list[dict]], refs: dict[str, list[str]], tools: list | None
             ) -> tuple[list[tuple[list[int], list[int], dict]], dict[str, list[str]], bool]:
        """Encode history + each reply; too long: the oldest exchanges go (with their images and videos), then a
        last exchange still too long is cut at cutoff_len, unless the cut would go through or drop an image's
        tokens (skipped)."""
        o = self.options
        images, videos = self._load(refs)
        encoded = [self._encode(history + reply, images, videos, tools, len(reply) if any(replies) else None)
                   for reply in replies]
        truncated = any(len(ids) > o.cutoff_len for ids, _, _ in encoded)
        if truncated:
            all_refs = refs
            for shorter in _exchange_cuts(history):  # each drops one more of the oldest exchanges
                system = 1 if history[0].get("role") == "system" else 0  # kept by every cut
                gone = history[system: system + len(history) - len(shorter)]
                drop = {key: sum(media.content_count(m, key) for m in gone) for key in MEDIA_COLUMNS}
                refs = {key: all_refs[key][drop[key]:] for key in MEDIA_COLUMNS}
                encoded = [self._encode(shorter + reply, images[drop["images"]:], videos[drop["videos"]:], tools,
                                        len(reply) if any(replies) else None) for reply in replies]
                if all(len(ids) <= o.cutoff_len for ids, _, _ in encoded):
                    break
            if any(any(t in self.never for t in ids[o.cutoff_len:]) for ids, _, _ in encoded):
                raise SkipRecord(f"an image's tokens do not fit within cutoff_len={o.cutoff_len}")
            encoded = [(ids[: o.cutoff_len], labels[: o.cutoff_len], {k: v[: o.cutoff_len] for k, v in ex.items()})
                       for ids, labels, ex in encoded]
        if any(all(label == IGNORE_INDEX for label in labels) for _, labels, _ in encoded):
            raise SkipRecord(_nothing_trained(truncated, o.cutoff_len))
        return encoded, refs, truncated

    def _encode(self, messages: list[dict], images: list, videos: list, tools: list | None,
                reply_messages: int | None) -> tuple[list[int], list[int], dict[str, list[int]]]:
        o = self.options
        parts = as_parts(messages)
        if o.train_on_prompt:
            text = render(self.tokenizer, parts, tools, enable_thinking=o.enable_thinking)
            text_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            text_labels = list(text_ids)
        else:
            rendered = render_conversation(self.tokenizer, parts, tools, enable_thinking=o.enable_thinking)
            text = rendered.text
            encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            text_ids = encoding["input_ids"]
            text_labels = span_labels(text_ids, encoding["offset_mapping"],
                                      trained_spans(rendered, messages, o.mask_history, reply_messages))
        out = process(self.processor, text, images, videos)
        ids = [int(t) for t in out["input_ids"][0]]
        return ids, carry_labels(text_ids, text_labels, ids, self.never), \
            {k: [int(t) for t in out[k][0]] for k in self.extras}


def prompt_inputs(processor: Any, messages: list[dict], images: list, tools: list | None = None,
                  **template_kwargs: Any) -> tuple[list[int], dict[str, Any]]:
    """A vision-language model's prompt (messages with placeholders, their loaded images): its ids with the
    generation prompt, and the other model inputs the processor makes for it (pixel values, ...) as tensors."""
    media.check_counts({"messages": messages, "images": images})
    text = render(processor.tokenizer, as_parts(messages), tools, add_generation_prompt=True, **template_kwargs)
    out = process(processor, text, images, return_tensors="pt")
    ids = [int(t) for t in out["input_ids"][0]]
    return ids, {k: v for k, v in out.items() if k not in _TEXT_OUTPUTS}


def process(processor: Any, text: str, images: list, videos: list | None = None, **kwargs: Any) -> Any:
    """The processor on one rendered conversation (its images, and videos as lists of frames), with special tokens
    as `processor.apply_chat_template` adds them (none when the rendering starts with BOS, the processor's default
    otherwise)."""
    bos = processor.tokenizer.bos_token
    if bos is not None and text.startswith(bos):
        kwargs["add_special_tokens"] = False
    if videos:
        kwargs["videos"] = videos
    return processor(text=[text], images=images or None, **kwargs)


@dataclass
class MultimodalCollator:
    """A text collator's batch (`SftCollator`, `PairCollator`) plus what the processor gives the model for the
    batch's images (pixel values, grids, sizes: whatever its image processor returns, batched the way the processor
    itself batches them) and the per-token outputs stored with the ids, padded with 0. Pair batches hold the chosen
    rows, then the rejected rows: each row's images are its own."""

    text_collator: Any
    processor: Any
    media_options: MediaOptions
    extras: tuple[str, ...] = ()

    def __call__(self, features: list[dict]) -> dict[str, Any]:
        import torch

        batch = self.text_collator(features)
        length = batch["input_ids"].shape[1]
        sides = ["chosen_", "rejected_"] if "chosen_input_ids" in features[0] else [""]
        rows = [(f, side) for side in sides for f in features]
        for key in self.extras:
            batch[key] = torch.as_tensor([list(f[side + key]) + [0] * (length - len(f[side + key]))
                                          for f, side in rows], dtype=torch.long)
        images = [[self.media_options.image(ref) for ref in f["images"]] for f, _ in rows]
        videos = [[self.media_options.video(ref) for ref in f.get("videos") or []] for f, _ in rows]
        if any(images) or any(videos):
            batch.update(self.pixel_inputs(images, videos))
        return batch

    def pixel_inputs(self, images: list[list], videos: list[list] | None = None) -> dict[str, Any]:
        """The processor's outputs for rows of images and videos (its text outputs dropped): one placeholder per
        image and video as each row's text, so the processor's own path, defaults and batching apply."""
        videos = videos or [[] for _ in images]
        rows = [i for i, (im, vi) in enumerate(zip(images, videos, strict=True)) if im or vi]
        texts = [self.processor.image_token * len(images[i]) +
                 (getattr(self.processor, "video_token", "") or "") * len(videos[i]) for i in rows]
        kwargs: dict[str, Any] = {}
        if any(images[i] for i in rows):
            kwargs["images"] = [images[i] for i in rows if images[i]]
        if any(videos[i] for i in rows):
            kwargs["videos"] = [v for i in rows for v in videos[i]]
        out = self.processor(text=texts, padding=True, return_tensors="pt", **kwargs)
        return {k: v for k, v in out.items() if k not in _TEXT_OUTPUTS and k not in self.extras}
