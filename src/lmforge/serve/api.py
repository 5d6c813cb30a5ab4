"""`lmforge api`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over the generation engine.

Endpoints: GET /v1/models, POST /v1/chat/completions and /v1/completions (plain JSON or SSE streams), GET /health.
Every error is OpenAI's `{"error": {...}}` body with a 4xx status for the client's mistakes; the server stays up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from jinja2 import TemplateError

from lmforge.config.generation import GenerationArguments
from lmforge.config.schema import ServeConfig
from lmforge.data import media
from lmforge.data.multimodal import MediaOptions, prompt_inputs
from lmforge.data.skips import SkipRecord
from lmforge.data.template import prompt_ids
from lmforge.data.tool_calls import parse_tool_calls
from lmforge.model.sampling import SamplingParams
from lmforge.serve.engine import Event, RequestError
from lmforge.serve.http_app import ApiError, answered_names, base_app, internal_error
from lmforge.serve.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest, SamplingRequest, error_body
from lmforge.serve.tools import template_message

logger = logging.getLogger(__name__)


class Session:
    """One request's bridge from the engine's worker thread to the event loop."""

    def __init__(self, engine, prompts: list[list[int]], params: SamplingParams, n: int,
                 media: dict[str, Any] | None = None):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        self.n, self.prompts = n, prompts
        self.handles = []
        try:
            for p, prompt in enumerate(prompts):
                self.handles.append(engine.submit(prompt, params, self._sink(p), n, **({"media": media}
                                                                                       if media else {})))
        except BaseException:
            self.cancel()
            raise

    def _sink(self, prompt_index: int):
        def put(event: Event) -> None:
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, (prompt_index * self.n + event.index, event))
            except RuntimeError:  # the loop is gone (server shutting down)
                pass
        return put

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        """(choice index, event) until every choice has finished, or the session is aborted."""
        open_choices = len(self.prompts) * self.n
        while open_choices:
            choice, event = await self.queue.get()
            if choice == _ABORTED:
                return
            if event.finish_reason:
                open_choices -= 1
            yield choice, event

    def cancel(self) -> None:
        for handle in self.handles:
            handle.cancel()

    def abort(self) -> None:
        """Stop generating and end `events()` (the client has gone: nobody waits for the rest)."""
        self.cancel()
        self.queue.put_nowait((_ABORTED, Event(_ABORTED)))


_ABORTED = -1


async def _cancel_when_disconnected(request: Request, session: Session, every: float = 0.2) -> None:
    """Abort `session` once the client of `request` has disconnected (a plain JSON answer has no stream whose
    failed write would tell)."""
    while not await request.is_disconnected():
        await asyncio.sleep(every)
    logger.info("client gone: its request's generation is cancelled")
    session.abort()


def longest_token_chars(tokenizer: Any) -> int:
    """The most characters one token of `tokenizer` spells (byte-level, SentencePiece and byte-fallback spellings are
    at least as long as the text they decode to)."""
    return max(map(len, tokenizer.get_vocab()), default=1)


def message_chars(message: ChatMessage) -> int:
    """The characters of a message's text (its parts' text, its tool calls' JSON)."""
    content = message.content
    parts = [content] if isinstance(content, str) else [p.text or "" for p in content or []]
    return sum(map(len, parts)) + len(json.dumps(message.tool_calls or []))


def failure_message(event: Event) -> str:
    """What a client is told of a failed generation: its own request's problem as it is, the server's own by a
    request id only (the detail goes to the log)."""
    return internal_error(event.error or "") if event.internal else f"The request failed: {event.error}."


def vision_prompt(processor: Any, messages: list[dict], tools: list | None, template_kwargs: dict[str, Any],
                  media_options: MediaOptions) -> tuple[list[int], dict[str, Any]]:
    """A vision-language model's prompt from OpenAI messages: ids and pixel inputs (images fetched and bounded)."""
    messages, refs = media.from_openai_messages(messages)
    images = [media_options.image(ref) for ref in refs]
    return prompt_inputs(processor, [template_message(m) for m in messages], images, tools, **template_kwargs)


def create_app(engine, model_name: str, gen: GenerationArguments, api_key: str | None = None,
               max_request_bytes: int = 8 * 1024 * 1024, max_prompts: int = 64,
               media_options: MediaOptions | None = None, loopback_names: list[str] | None = None) -> FastAPI:
    media_options = media_options or MediaOptions()
    app, authorised = base_app(model_name, api_key, max_request_bytes, loopback_names)
    created = int(time.time())
    longest_token: list[int] = []  # the tokenizer's longest token in characters, found at the first request

    async def refuse_unfittable(chars: int, param: str) -> None:
        """A 400 for text that cannot fit the context whatever it tokenizes to, before it is tokenized: no token
        stands for more characters than the longest in the vocabulary (doubled, for normalizers that shorten text),
        so a prompt longer than context x that cannot fit. A megabyte prompt costs a length check, not seconds of
        tokenizing and gigabytes of ids."""
        if not longest_token:
            longest_token.append(await asyncio.to_thread(longest_token_chars, engine.tokenizer))
        limit = engine.context_length * longest_token[0] * 2
        if chars > limit:
            raise ApiError(400, f"The prompt is {chars} characters long; this model's context is "
                           f"{engine.context_length} tokens, which no text over {limit} characters fits.",
                           param=param, code="context_length_exceeded")

    def sampling(body: SamplingRequest, prompt_tokens: list[int]) -> SamplingParams:
        requested, param = body.requested_tokens
        try:  # unset: the config's max_new_tokens, as far as the context allows
            room = engine.check_fits(max(prompt_tokens), requested, param)
        except RequestError as err:
            raise ApiError(400, str(err), param=err.param, code=err.code) from None
        max_tokens = room if requested is not None else min(room, gen.max_new_tokens)
        defaults = SamplingParams.from_generation(gen, max_tokens=max_tokens, stop=body.stop, seed=body.seed,
                                                  presence_penalty=body.presence_penalty,
                                                  frequency_penalty=body.frequency_penalty)
        for name in ("temperature", "top_p", "top_k", "repetition_penalty"):
            if getattr(body, name) is not None:
                setattr(defaults, name, getattr(body, name))
        if body.logit_bias:
            defaults.logit_bias = {int(token): bias for token, bias in body.logit_bias.items()}
            unknown = [t for t in defaults.logit_bias if t >= len(engine.tokenizer)]
            if unknown:
                raise ApiError(400, f"logit_bias names token {unknown[0]}, beyond this model's vocabulary of "
                               f"{len(engine.tokenizer)} tokens.", param="logit_bias")
        if body.top_p is not None and body.top_k is None:
            defaults.top_k = 0  # OpenAI clients know no top-k: a top_p they set is the only truncation
        return defaults

    def start(prompts: list[list[int]], body: SamplingRequest, media: dict[str, Any] | None = None) -> Session:
        params = sampling(body, [len(p) for p in prompts])
        try:
            return Session(engine, prompts, params, body.n, media)
        except RequestError as err:
            raise ApiError(400, str(err), param=err.param, code=err.code) from None

    def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    def sse(value: dict[str, Any]) -> str:
        return f"data: {json.dumps(value, ensure_ascii=False)}\n\n"

    async def collect(session: Session, request: Request) -> tuple[list[str], list[str], int]:
        """Texts and finish reasons per choice, and the completion tokens of all. The request's generation stops
        when it fails, when it returns, and when its client goes away before the answer (as a stream's does)."""
        count = len(session.prompts) * session.n
        texts, reasons, tokens = [""] * count, ["stop"] * count, 0
        watcher = asyncio.create_task(_cancel_when_disconnected(request, session))
        try:
            async for choice, event in session.events():
                if event.error:
                    raise ApiError(500, failure_message(event), "server_error")
                texts[choice] += event.text
                if event.finish_reason:
                    reasons[choice], tokens = event.finish_reason, tokens + event.completion_tokens
        finally:
            watcher.cancel()
            session.cancel()
        return texts, reasons, tokens

    async def stream(session: Session, chunk, final_usage: int | None) -> AsyncIterator[str]:
        """SSE: chunk(choice, text, finish_reason) per event; a usage chunk when asked; then [DONE]."""
        tokens = 0
        try:
            async for choice, event in session.events():
                if event.error:
                    yield sse(error_body(failure_message(event), "server_error"))
                    break
                if event.text or event.finish_reason:
                    yield sse(chunk(choice, event.text, event.finish_reason))
                tokens += event.completion_tokens
            else:
                if final_usage is not None:
                    yield sse(chunk(None, "", None) | {"choices": [], "usage": usage(final_usage, tokens)})
            yield "data: [DONE]\n\n"
        finally:
            session.cancel()  # a client that disconnected stops its generation

    def streaming(body: AsyncIterator[str]) -> StreamingResponse:
        return StreamingResponse(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/v1/models", dependencies=[Depends(authorised)])
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "lmforge", "max_model_len": engine.context_length}]}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorised)])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        raw = [m.model_dump(exclude_none=True) for m in body.messages]
        await refuse_unfittable(sum(map(message_chars, body.messages)) + len(json.dumps(body.tools or [])),
                                "messages")
        if not engine.tokenizer.chat_template:
            raise ApiError(400, "This model has no chat template: use /v1/completions, or restart the server with "
                           "`template` set.")
        processor = getattr(engine, "processor", None)
        inputs: dict[str, Any] | None = None
        try:  # rendering and tokenizing off the event loop: a slow one does not stall the other requests
            if processor is not None:
                prompt, inputs = await asyncio.to_thread(vision_prompt, processor, raw, body.tools,
                                                         body.chat_template_kwargs or {}, media_options)
            else:
                if any(p.type == "image_url" for m in body.messages if isinstance(m.content, list)
                       for p in m.content):
                    raise ApiError(400, f"{model_name} takes text only: remove the image_url parts.",
                                   param="messages")
                prompt = await asyncio.to_thread(prompt_ids, engine.tokenizer, [template_message(m) for m in raw],
                                                 body.tools, **(body.chat_template_kwargs or {}))
        except SkipRecord as err:  # an image that cannot be read, or placeholders without images
            raise ApiError(400, f"Bad image input: {err}", param="messages") from None
        except (TemplateError, TypeError, ValueError) as err:
            raise ApiError(400, f"The chat template cannot render these messages: {err}", param="messages") from None
        session = start([prompt], body, inputs)
        reply_id, stamp = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        with_tools = bool(body.tools) and body.tool_choice != "none"

        def message(text: str, reason: str) -> tuple[dict[str, Any], str]:
            content, calls = parse_tool_calls(text) if with_tools else (text, [])
            out: dict[str, Any] = {"role": "assistant", "content": content}
            if calls:
                out["tool_calls"] = calls
            return out, ("tool_calls" if calls else reason)

        if not body.stream:
            texts, reasons, tokens = await collect(session, request)
            choices = []
            for i, (text, reason) in enumerate(zip(texts, reasons, strict=True)):
                reply, finish = message(text, reason)
                choices.append({"index": i, "message": reply, "finish_reason": finish, "logprobs": None})
            return {"id": reply_id, "object": "chat.completion", "created": stamp, "model": model_name,
                    "choices": choices, "usage": usage(len(prompt), tokens)}

        started: set[int] = set()
        held: dict[int, str] = {}  # with tools, a choice's text is sent whole at its end, once its calls are parsed

        def chunk(choice: int | None, text: str, reason: str | None) -> dict[str, Any]:
            out = {"id": reply_id, "object": "chat.completion.chunk", "created": stamp, "model": model_name}
            if choice is None:
                return out
            delta: dict[str, Any] = {}
            if choice not in started:
                started.add(choice)
                delta["role"] = "assistant"
            if with_tools:
                held[choice] = held.get(choice, "") + text
                if reason:
                    reply, reason = message(held.pop(choice), reason)
                    delta.update({k: v for k, v in reply.items() if k != "role"})
                    for i, call in enumerate(delta.get("tool_calls", [])):
                        call["index"] = i
            else:
                delta["content"] = text
            return out | {"choices": [{"index": choice, "delta": delta, "finish_reason": reason, "logprobs": None}]}

        return streaming(stream(session, chunk, len(prompt) if body.include_usage else None))

    @app.post("/v1/completions", dependencies=[Depends(authorised)])
    async def completions(body: CompletionRequest, request: Request):
        texts_in = body.prompts()
        if len(texts_in) > max_prompts:
            raise ApiError(400, f"At most {max_prompts} prompts per request (max_prompts_per_request), got "
                           f"{len(texts_in)}.", param="prompt")
        for text in texts_in:
            if isinstance(text, str):
                await refuse_unfittable(len(text), "prompt")
            elif len(text) >= engine.context_length:  # ids that leave no room: refused before they are checked
                raise ApiError(400, f"The prompt is {len(text)} tokens long; this model's context is "
                               f"{engine.context_length} tokens.", param="prompt", code="context_length_exceeded")
        prompts = await asyncio.to_thread(
            lambda: [engine.tokenizer(p)["input_ids"] if isinstance(p, str) else p for p in texts_in])
        vocab = len(engine.tokenizer)
        if any(not 0 <= t < vocab for p in prompts for t in p):
            raise ApiError(400, f"Token ids in 'prompt' must be between 0 and {vocab - 1}.", param="prompt")
        session = start(prompts, body)
        reply_id, stamp = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        prompt_tokens = sum(len(p) for p in prompts)

        def echoed(choice: int) -> str:
            source = texts_in[choice // body.n]
            return source if isinstance(source, str) else engine.tokenizer.decode(source)

        if not body.stream:
            texts, reasons, tokens = await collect(session, request)
            choices = [{"index": i, "text": (echoed(i) if body.echo else "") + text, "finish_reason": reason,
                        "logprobs": None} for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))]
            return {"id": reply_id, "object": "text_completion", "created": stamp, "model": model_name,
                    "choices": choices, "usage": usage(prompt_tokens, tokens)}

        echo_pending = set(range(len(prompts) * body.n)) if body.echo else set()

        def chunk(choice: int | None, text: str, reason: str | None) -> dict[str, Any]:
            out = {"id": reply_id, "object": "text_completion", "created": stamp, "model": model_name}
            if choice is None:
                return out
            if choice in echo_pending:
                echo_pending.discard(choice)
                text = echoed(choice) + text
            return out | {"choices": [{"index": choice, "text": text, "finish_reason": reason, "logprobs": None}]}

        return streaming(stream(session, chunk, prompt_tokens if body.include_usage else None))

    return app


def resolve_api_key(cfg: ServeConfig) -> str | None:
    return cfg.serve.api_key or os.environ.get("LMFORGE_API_KEY") or None


def run_api(cfg: ServeConfig) -> None:
    """Load the model and serve it until interrupted."""
    import uvicorn

    from lmforge.model.build import is_sequence_classifier
    from lmforge.serve.load import load_engine, served_name

    api_key = resolve_api_key(cfg)
    names = answered_names(cfg.serve, api_key)  # before anything loads: an exposed server needs a key
    if is_sequence_classifier(cfg.model):  # a `stage: cls` model: POST /v1/classify
        from lmforge.serve.classify import create_classify_app

        app = create_classify_app(cfg, served_name(cfg), api_key, names)
        port = cfg.serve.port if cfg.serve.port is not None else 8000
        logger.info("Serving the classifier %s at http://%s:%d/v1/classify", served_name(cfg), cfg.serve.host, port)
        uvicorn.run(app, host=cfg.serve.host, port=port, log_level="info")
        return
    engine = load_engine(cfg, need_chat_template=False)
    app = create_app(engine, served_name(cfg), cfg.generation, api_key, cfg.serve.max_request_bytes,
                     cfg.serve.max_prompts_per_request, MediaOptions(cfg.data.image_max_pixels,
                                                                     cfg.data.image_min_pixels), names)
    port = cfg.serve.port if cfg.serve.port is not None else 8000
    logger.info("Serving %s at http://%s:%d/v1 (%s)", served_name(cfg), cfg.serve.host, port,
                "API key required" if api_key else "no API key")
    try:
        uvicorn.run(app, host=cfg.serve.host, port=port, log_level="info")
    finally:
        engine.close()
