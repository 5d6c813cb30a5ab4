"""Images and videos of multimodal conversations: where they are, how many each record has, and loading them.

A normalised multimodal example keeps LLaMA-Factory's convention: each image (video) is an `<image>` (`<video>`)
placeholder inside a message's text, and the example's `images` (`videos`) list names them in order. Sources give
them as LLaMA-Factory columns (`images`/`videos`, paths relative to `dataset_dir`), or as OpenAI content parts
(`{"type": "image_url", "image_url": {"url": ...}}`, transformers' `{"type": "image", "url"|"path"|"image": ...}`),
which become placeholders here. A reference is a local path, a `file://` URL, a `data:` URL or an http(s) URL.
"""

from __future__ import annotations

import base64
import io
import math
import os
from typing import Any
from urllib.parse import unquote, urlparse

from lmforge.data.skips import SkipRecord

PLACEHOLDERS = {"images": "<image>", "videos": "<video>"}
PART_TYPES = {"image": "images", "image_url": "images", "input_image": "images", "video": "videos",
              "video_url": "videos"}


def part_reference(part: dict[str, Any], what: str) -> str:
    """The file/URL an image or video content part points to."""
    value: Any = None
    for key in (part["type"], "url", "path", "image", "video"):
        if part.get(key) not in (None, ""):
            value = part[key]
            break
    if isinstance(value, dict):  # OpenAI: {"image_url": {"url": ..., "detail": ...}}
        value = value.get("url") or value.get("path")
    if not isinstance(value, str) or not value:
        raise SkipRecord(f"{what}: the {part['type']} part names no file or URL")
    return value


def from_openai_messages(messages: list[dict]) -> tuple[list[dict], list[str]]:
    """Chat messages whose content may be OpenAI parts -> the same messages with string content (images as
    placeholders) and the image references in order (requests to `lmforge api`, `lmforge chat`)."""
    out, images = [], []
    for i, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, list):
            text = []
            for part in content:
                if part.get("type") in PART_TYPES:
                    if PART_TYPES[part["type"]] != "images":
                        raise SkipRecord(f"message {i}: only images are supported in requests, not {part['type']}")
                    images.append(part_reference(part, f"message {i}"))
                    text.append(PLACEHOLDERS["images"])
                else:
                    text.append(part.get("text") or "")
            message = {**message, "content": "".join(text)}
        out.append(message)
    return out, images


def reference(value: Any, what: str) -> str:
    """A media column entry as a reference string: a path or URL, or (a datasets Image cell) its bytes as a data
    URL."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict):
        if value.get("bytes"):
            return "data:application/octet-stream;base64," + base64.b64encode(value["bytes"]).decode()
        if isinstance(value.get("path"), str) and value["path"]:
            return value["path"]
    raise SkipRecord(f"{what} must be a file path or URL, got {type(value).__name__}")


def resolve(ref: str, base_dirs: list[str]) -> str:
    """A reference made absolute: local files are looked up in `base_dirs` (dataset_dir first) and must exist;
    data and http(s) URLs pass unchanged."""
    if ref.startswith(("data:", "http://", "https://")):
        return ref
    path = unquote(urlparse(ref).path) if ref.startswith("file://") else os.path.expanduser(ref)
    candidates = [path] if os.path.isabs(path) else [os.path.join(d, path) for d in base_dirs]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    raise SkipRecord(f"media file '{ref}' not found" + (f" (looked in {', '.join(base_dirs)})"
                                                         if not os.path.isabs(path) else ""))


def resolve_example(example: dict[str, Any], base_dirs: list[str]) -> dict[str, Any]:
    """The example with every media reference resolved (`resolve`); SkipRecord naming a missing file."""
    for key in PLACEHOLDERS:
        if example.get(key):
            example[key] = [resolve(ref, base_dirs) for ref in example[key]]
    return example


def check_counts(example: dict[str, Any]) -> None:
    """Every placeholder has its file and every file its placeholder; none sits in a reply (nothing in the
    assistant's turn is an input the model sees before writing it)."""
    messages = list(example["messages"])
    replies = [m for key in ("chosen", "rejected") for m in example.get(key) or []]
    for key, placeholder in PLACEHOLDERS.items():
        found = sum(_text(m).count(placeholder) for m in messages + replies)
        given = len(example.get(key) or [])
        if found != given:
            raise SkipRecord(f"{found} {placeholder} placeholder(s) but {given} {key[:-1]} file(s)")
        if any(placeholder in _text(m) for m in messages + replies if m.get("role") == "assistant"):
            raise SkipRecord(f"an assistant message holds a {placeholder}: media may only be inputs")


def content_count(message: dict, key: str) -> int:
    """How many `key` (images, videos) placeholders a message holds."""
    return _text(message).count(PLACEHOLDERS[key])


def _text(message: dict) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else ""


def content_parts(text: str) -> list[dict[str, str]]:
    """A message's text with placeholders -> the content parts processors' chat templates take."""
    parts: list[dict[str, str]] = []
    rest = text
    while rest:
        hits = [(rest.find(p), kind) for kind, p in PLACEHOLDERS.items() if p in rest]
        if not hits:
            parts.append({"type": "text", "text": rest})
            break
        pos, kind = min(hits)
        if pos:
            parts.append({"type": "text", "text": rest[:pos]})
        parts.append({"type": kind[:-1]})
        rest = rest[pos + len(PLACEHOLDERS[kind]):]
    return parts


def _source(ref: str) -> Any:
    """A reference as something PIL or PyAV opens: a path, or the bytes of a data or http(s) URL."""
    if ref.startswith("data:"):
        return io.BytesIO(base64.b64decode(ref.split(",", 1)[1]))
    if ref.startswith(("http://", "https://")):
        from urllib.request import urlopen

        with urlopen(ref, timeout=30) as response:  # noqa: S310 - the user's own data names it
            return io.BytesIO(response.read())
    return ref


def load_image(ref: str, max_pixels: int, min_pixels: int) -> Any:
    """The image as an RGB PIL image, scaled (aspect kept) into [min_pixels, max_pixels] as LLaMA-Factory's
    `image_max_pixels`/`image_min_pixels` do. SkipRecord naming the file when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(_source(ref))
        image.load()
    except (OSError, UnidentifiedImageError, ValueError, IndexError) as err:
        raise SkipRecord(f"image '{_short(ref)}' cannot be read ({type(err).__name__}: {str(err)[:80]})") from None
    return _bounded(image, max_pixels, min_pixels)


def load_video(ref: str, fps: float, maxlen: int, max_pixels: int, min_pixels: int) -> list:
    """A video as RGB PIL frames: `fps` frames per second of its duration, evenly spaced, at most `maxlen` (at
    least one), each scaled into [min_pixels, max_pixels] (LLaMA-Factory's `video_fps`, `video_maxlen`,
    `video_max_pixels`). Decoded with PyAV (`pip install av`); SkipRecord naming the file when it cannot be."""
    try:
        import av
    except ImportError:
        raise SkipRecord("reading videos needs PyAV: pip install av (or lmforge[video])") from None
    try:
        with av.open(_source(ref)) as container:
            stream = container.streams.video[0]
            total = stream.frames or 0
            frames = [frame.to_image() for frame in container.decode(stream)] if not total else None
            total = total or len(frames or [])
            seconds = float(stream.duration * stream.time_base) if stream.duration else \
                (container.duration or 0) / 1_000_000
            count = max(1, min(total, maxlen, int(seconds * fps) if seconds else total))
            wanted = {round(i * (total - 1) / max(count - 1, 1)) for i in range(count)}
            if frames is None:
                frames = [frame.to_image() for i, frame in enumerate(container.decode(stream)) if i in wanted]
            else:
                frames = [frame for i, frame in enumerate(frames) if i in wanted]
    except (OSError, ValueError, IndexError, av.error.FFmpegError) as err:
        raise SkipRecord(f"video '{_short(ref)}' cannot be read ({type(err).__name__}: {str(err)[:80]})") from None
    if not frames:
        raise SkipRecord(f"video '{_short(ref)}' has no frames")
    return [_bounded(frame, max_pixels, min_pixels) for frame in frames]


def _bounded(image: Any, max_pixels: int, min_pixels: int) -> Any:
    """`image` scaled (aspect kept) into [min_pixels, max_pixels], in RGB."""
    width, height = image.size
    if width * height > max_pixels:
        factor = math.sqrt(max_pixels / (width * height))
        image = image.resize((max(int(width * factor), 1), max(int(height * factor), 1)))
    elif width * height < min_pixels:
        factor = math.sqrt(min_pixels / (width * height))
        image = image.resize((math.ceil(width * factor), math.ceil(height * factor)))
    return image.convert("RGB") if image.mode != "RGB" else image


def _short(ref: str) -> str:
    return ref if not ref.startswith("data:") else ref[:40] + "..."
