"""The generation engine behind chat, the API and the web UI: one worker thread owns the model and decodes every
running request as one batch, each row streaming its own text to its own sink.

Continuous batching: a request that arrives while the batch decodes is prefilled (with the others that arrived
meanwhile) before the next step and its KV cache joins the batch's; a finished row leaves the batch and the cache at
once. Rows are left-padded to a common cache length with explicit positions and an attention mask, so each row
attends to its own tokens only and decodes as it would alone.

Why not `model.generate`: it takes one set of sampling settings per call and streams one sequence; a server needs
per-request temperature/top-p/stop strings/seeds and a separate stream per request inside one batch, and requests
that join a running batch. The loop below is the plain KV-cache decode `generate` runs.

A request with images (a vision-language model) is prefilled with its pixel inputs and decoded on its own, beside the
batch, with the positions the model computes itself (Qwen2-VL's 3D rope, Gemma 3's image attention): one such
request at a time, interleaved step by step with the text batch.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

from lmforge.model.kv_cache import cache_kwargs, last_logits_only, output_cache
from lmforge.model.sampling import SamplingError, SamplingParams, choose_one
from lmforge.serve.detokenize import TextStream

logger = logging.getLogger(__name__)


@dataclass
class Event:
    """What a request's sink receives: text of choice `index`, and once per choice, its end."""

    index: int
    text: str = ""
    finish_reason: str | None = None  # "stop" (stop token or string), "length" (max_tokens), "error"
    completion_tokens: int = 0
    error: str | None = None
    internal: bool = True  # the error is the server's (its detail stays in the log), not the request's own


Sink = Callable[[Event], None]


class RequestError(ValueError):
    """A request the engine cannot serve as asked (the API answers 400 with this message)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


@dataclass
class Handle:
    """A submitted request: `cancel()` stops its sequences at the next step (a client that went away)."""

    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class _Sequence:
    prompt: list[int]
    params: SamplingParams
    index: int
    sink: Sink
    handle: Handle
    stream: TextStream
    generator: torch.Generator
    generated: list[int] = field(default_factory=list)
    media: dict[str, Any] | None = None  # a vision-language model's inputs besides the ids (pixel values, ...)

    def finish(self, reason: str, text: str = "", counted: int = 0) -> None:
        self.sink(Event(self.index, text + self.stream.flush(), reason, len(self.generated) + counted))


class Engine:
    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, stop_ids: list[int],
                 max_batch_size: int = 8, max_model_len: int | None = None, continuous: bool = True,
                 processor: Any = None):
        self.model, self.tokenizer = model, tokenizer
        self.processor = processor  # a vision-language model's: requests may carry images
        self.continuous = continuous
        self.stop_ids = set(stop_ids)
        self.max_batch_size = max_batch_size
        self.context_length = max_model_len or getattr(model.config, "max_position_embeddings", None) or 2048
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
        self._waiting: deque[_Sequence] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="lmforge-engine", daemon=True)
        self._worker.start()

    # ---- requests ----------------------------------------------------------------------------------------------

    def check_fits(self, prompt_tokens: int, max_tokens: int | None, param: str = "max_tokens") -> int:
        """The completion budget of a prompt: `max_tokens`, or all the context the prompt leaves."""
        room = self.context_length - prompt_tokens
        if room < 1:
            raise RequestError(f"The prompt is {prompt_tokens} tokens long; this model's context is "
                               f"{self.context_length} tokens, which leaves no room for a completion.",
                               "messages", "context_length_exceeded")
        if max_tokens is None:
            return room
        if max_tokens > room:
            raise RequestError(f"{param} is {max_tokens}, but the prompt ({prompt_tokens} tokens) leaves room for "
                               f"at most {room} in this model's context of {self.context_length} tokens.",
                               param, "context_length_exceeded")
        return max_tokens

    def submit(self, prompt: list[int], params: SamplingParams, sink: Sink, n: int = 1,
               media: dict[str, Any] | None = None) -> Handle:
        """Queue `n` completions of `prompt` (with `media`: the processor's pixel inputs for it); events go to
        `sink` from the worker thread."""
        if not prompt:
            raise RequestError("The prompt is empty.", "prompt")
        self.check_fits(len(prompt), params.max_tokens)
        handle = Handle()
        seed = params.seed if params.seed is not None else random.randrange(2**62)
        # every choice is built before any is queued: a request is queued whole or not at all; the seeds wrap into
        # the generator's 64 bits (manual_seed maps negative seeds the same way)
        sequences = [_Sequence(prompt, params, index, sink, handle, TextStream(self.tokenizer, params.stop),
                               torch.Generator().manual_seed((seed + index) % 2**64), media=media)
                     for index in range(n)]
        with self._wake:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._waiting.extend(sequences)
            self._wake.notify()
        return handle

    def stream(self, prompt: list[int], params: SamplingParams, media: dict[str, Any] | None = None
               ) -> Iterator[str]:
        """One completion's text as it is generated (for callers that are not asyncio: chat, the web UI)."""
        events: queue.Queue[Event] = queue.Queue()
        handle = self.submit(prompt, params, events.put, media=media)
        try:
            while True:
                event = events.get()
                if event.error:
                    raise RuntimeError(event.error)
                if event.text:
                    yield event.text
                if event.finish_reason:
                    return
        finally:
            handle.cancel()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._worker.join(timeout=30)

    # ---- the worker --------------------------------------------------------------------------------------------

    def _run(self) -> None:
        batch: _Batch | None = None
        solo: _Batch | None = None  # the request with images being decoded
        media_waiting: deque[_Sequence] = deque()
        while True:
            with self._wake:
                while not self._waiting and batch is None and solo is None and not media_waiting and \
                        not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                room = self.max_batch_size - (len(batch.rows) if batch else 0)
                if batch is not None and not (self.continuous and batch.can_merge):
                    room = 0  # static batching: newcomers wait for the running batch to finish
                newcomers = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
            newcomers = [s for s in newcomers if not s.handle.cancelled.is_set()]
            media_waiting.extend(s for s in newcomers if s.media is not None)
            newcomers = [s for s in newcomers if s.media is None]
            try:
                if newcomers:
                    joined = self._prefill(newcomers)
                    batch = joined if batch is None else batch.merge(joined)
                    newcomers = []
                if batch is not None:
                    batch = self._decode_step(batch)
            except Exception as err:  # the server must outlive one failed batch (e.g. out of memory)
                self._failed((batch.rows if batch else []) + newcomers, err)
                batch = None
            try:
                if solo is None and media_waiting:
                    solo = self._prefill_alone(media_waiting.popleft())
                if solo is not None:
                    solo = self._decode_step(solo)
            except Exception as err:  # noqa: BLE001 - as above, for the request with images
                self._failed(solo.rows if solo else [], err)
                solo = None

    def _failed(self, rows: list[_Sequence], err: Exception) -> None:
        own = isinstance(err, SamplingError)  # this request's numbers, not the server's state
        if not own:
            logger.exception("generation failed")
        for seq in rows:
            seq.handle.cancel()  # the request's other choices stop too: it has failed as a whole
            seq.sink(Event(seq.index, finish_reason="error", error=f"generation failed: {err}", internal=not own))
        if torch.cuda.is_available() and not own:
            torch.cuda.empty_cache()

    def _choose(self, seq: _Sequence, logits: torch.Tensor) -> int | None:
        """The next token of one sequence; None when choosing it failed, which ends that sequence's request alone
        (the rest of the batch goes on)."""
        try:
            return choose_one(logits, seq.params, seq.prompt, seq.generated, seq.generator)
        except Exception as err:  # noqa: BLE001 - one request's failure must not fail the batch
            self._failed([seq], err)
            return None

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor | None,
                 cache=None, **media: Any):
        extra: dict[str, Any] = last_logits_only(self.model)
        if positions is not None:
            extra["position_ids"], extra["attention_mask"] = positions, attention_mask
        # else a request with images, alone and unpadded: no mask, and the model numbers the positions itself from
        # its cache (Qwen2-VL's 3D rope continues from the deltas it found in the prompt)
        return self.model(input_ids=input_ids, use_cache=True, **cache_kwargs(self.model, cache), **extra, **media)

    @torch.inference_mode()
    def _prefill_alone(self, seq: _Sequence) -> _Batch:
        """A request with images: its prompt and pixel inputs through the model on their own."""
        device = self.model.device
        media = {k: v.to(device) if hasattr(v, "to") else v for k, v in (seq.media or {}).items()}
        if "pixel_values" in media and media["pixel_values"].is_floating_point():
            media["pixel_values"] = media["pixel_values"].to(self.model.dtype)
        input_ids = torch.tensor([seq.prompt], device=device)
        mask = torch.ones_like(input_ids)
        out = self._forward(input_ids, mask, None, **media)
        return _Batch([seq], output_cache(out), mask, None, out.logits[:, -1])

    @torch.inference_mode()
    def _prefill(self, rows: list[_Sequence]) -> _Batch:
        """The newcomers' prompts through the model as one left-padded batch: their cache and next-token logits."""
        device = self.model.device
        width = max(len(s.prompt) for s in rows)
        input_ids = torch.tensor([[self.pad_id] * (width - len(s.prompt)) + s.prompt for s in rows], device=device)
        mask = torch.tensor([[0] * (width - len(s.prompt)) + [1] * len(s.prompt) for s in rows], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self._forward(input_ids, mask, positions)
        return _Batch(rows, output_cache(out), mask, positions[:, -1], out.logits[:, -1])

    @torch.inference_mode()
    def _decode_step(self, batch: _Batch) -> _Batch | None:
        """Sample each row's next token from its pending logits; finished rows leave; the rest run one step."""
        logits = batch.logits.float()
        keep, tokens = [], []
        for row, seq in enumerate(batch.rows):
            token = self._choose(seq, logits[row])
            if token is not None and self._step(seq, token):
                keep.append(row)
                tokens.append(token)
        if not keep:
            return None
        if len(keep) < len(batch.rows):
            batch.select(keep)
        mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch.rows), 1)], dim=1)
        last = batch.last + 1 if batch.last is not None else None
        out = self._forward(torch.tensor(tokens, device=batch.mask.device)[:, None], mask,
                            last[:, None] if last is not None else None, batch.cache)
        return _Batch(batch.rows, output_cache(out), mask, last, out.logits[:, -1])

    def _step(self, seq: _Sequence, token: int) -> bool:
        """Give `token` to its sequence; False once the sequence is done."""
        if seq.handle.cancelled.is_set():
            return False
        if token in self.stop_ids:
            seq.finish("stop", counted=1)
            return False
        seq.generated.append(token)
        text, stopped = seq.stream.push(token)
        if stopped:
            seq.finish("stop", text)
            return False
        if len(seq.generated) >= seq.params.max_tokens:
            seq.finish("length", text)
            return False
        if text:
            seq.sink(Event(seq.index, text))
        return True


@dataclass
class _Batch:
    """The running rows, their KV cache (batch x heads x length x dim per layer, rows left-padded to one length),
    the attention mask over the cache, each row's last position and its pending next-token logits."""

    rows: list[_Sequence]
    cache: Any
    mask: torch.Tensor
    last: torch.Tensor | None  # None: a request with images, whose positions the model keeps itself
    logits: torch.Tensor

    @property
    def can_merge(self) -> bool:
        """Rows can join only a cache made of plain growing layers (sliding-window, static or quantized caches keep
        their own layout)."""
        layers = getattr(self.cache, "layers", None)
        return bool(layers) and all(type(layer) is DynamicLayer and layer.is_initialized for layer in layers)

    def select(self, keep: list[int]) -> None:
        """Only rows `keep` stay; cache columns that are padding for every remaining row go."""
        index = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.rows = [self.rows[r] for r in keep]
        self.mask, self.last, self.logits = self.mask[index], self.last[index], self.logits[index]
        unused = int(self.mask.any(dim=0).int().argmax())  # leading columns no row attends to
        if unused and self.can_merge:
            self.mask = self.mask[:, unused:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]

    def merge(self, other: _Batch) -> _Batch:
        """This batch and `other` as one: the shorter cache is left-padded to the longer one's length."""
        length = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, length), _left_pad(theirs.keys, length)])
            mine.values = torch.cat([_left_pad(mine.values, length), _left_pad(theirs.values, length)])
        mask = torch.cat([_left_pad(self.mask, length, dim=1), _left_pad(other.mask, length, dim=1)])
        return _Batch(self.rows + other.rows, self.cache, mask, torch.cat([self.last, other.last]),
                      torch.cat([self.logits, other.logits]))


def _left_pad(tensor: torch.Tensor, length: int, dim: int = 2) -> torch.Tensor:
    """`tensor` with zeros before its entries along `dim` up to `length`."""
    return F.pad(tensor, [0, 0] * (tensor.dim() - 1 - dim) + [length - tensor.shape[dim], 0])
