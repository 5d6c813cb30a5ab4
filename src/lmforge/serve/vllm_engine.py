"""The vLLM backend (`infer_backend: vllm`): the same interface as engine.Engine (submit events to a sink, check_fits,
stream, close) over vLLM's AsyncLLMEngine, which runs in its own event loop thread. Needs vLLM (CUDA)."""

from __future__ import annotations

import asyncio
import threading
import uuid

from transformers import PreTrainedTokenizerBase

from lmforge.config.schema import ServeConfig
from lmforge.model.sampling import SamplingParams
from lmforge.serve.engine import Engine, Event, Handle, RequestError, Sink


class VllmEngine:
    def __init__(self, cfg: ServeConfig, tokenizer: PreTrainedTokenizerBase, stop_ids: list[int]):
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        m = cfg.model
        self.tokenizer, self.stop_ids = tokenizer, list(stop_ids)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="lmforge-vllm", daemon=True)
        self._thread.start()
        args = AsyncEngineArgs(model=m.model_name_or_path, tokenizer=m.adapter_name_or_path or m.model_name_or_path,
                               dtype="auto" if m.infer_dtype == "auto" else m.infer_dtype,
                               max_model_len=cfg.serve.max_model_len, trust_remote_code=m.trust_remote_code,
                               gpu_memory_utilization=cfg.serve.vllm_gpu_memory_utilization,
                               enable_lora=bool(m.adapter_name_or_path))
        self.engine = AsyncLLMEngine.from_engine_args(args)
        self.context_length = cfg.serve.max_model_len or self._model_len()
        self.lora = None
        if m.adapter_name_or_path:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("adapter", 1, m.adapter_name_or_path)

    def _model_len(self) -> int:
        config = asyncio.run_coroutine_threadsafe(self.engine.get_model_config(), self.loop).result()
        return int(config.max_model_len)

    # the request checks and the synchronous stream are the transformers engine's, over this engine's submit
    check_fits = Engine.check_fits
    stream = Engine.stream

    def submit(self, prompt: list[int], params: SamplingParams, sink: Sink, n: int = 1) -> Handle:
        from vllm import SamplingParams as VllmSamplingParams

        if not prompt:
            raise RequestError("The prompt is empty.", "prompt")
        self.check_fits(len(prompt), params.max_tokens)
        sampling = VllmSamplingParams(
            n=n, max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1, repetition_penalty=params.repetition_penalty,
            presence_penalty=params.presence_penalty, frequency_penalty=params.frequency_penalty,
            stop=params.stop or None, stop_token_ids=self.stop_ids, seed=params.seed,
            logit_bias=params.logit_bias or None)
        handle, request_id = Handle(), uuid.uuid4().hex
        asyncio.run_coroutine_threadsafe(self._generate(prompt, sampling, request_id, sink, handle), self.loop)
        return handle

    async def _generate(self, prompt, sampling, request_id: str, sink: Sink, handle: Handle) -> None:
        sent: dict[int, int] = {}
        try:
            async for output in self.engine.generate({"prompt_token_ids": prompt}, sampling, request_id,
                                                     lora_request=self.lora):
                if handle.cancelled.is_set():
                    await self.engine.abort(request_id)
                    return
                for choice in output.outputs:
                    start = sent.get(choice.index, 0)
                    if start < 0:
                        continue  # finished already
                    text = choice.text[start:]
                    sent[choice.index] = len(choice.text)
                    if choice.finish_reason:
                        sent[choice.index] = -1
                        sink(Event(choice.index, text, "length" if choice.finish_reason == "length" else "stop",
                                   len(choice.token_ids)))
                    elif text:
                        sink(Event(choice.index, text))
        except Exception as err:  # the server outlives one failed request
            for index in range(sampling.n):
                if sent.get(index, 0) >= 0:
                    sink(Event(index, finish_reason="error", error=f"generation failed: {err}"))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)

