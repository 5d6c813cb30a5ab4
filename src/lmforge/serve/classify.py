"""`lmforge api CLASSIFIER`: a `stage: cls` model (or any sequence classifier) behind `POST /v1/classify`.

Body: `{"input": "text" | ["text", ...], "input_pair": optional, same shape}`; answer: `{"object": "list", "model",
"data": [{"index", "label" (or "labels" for multi-label, "value" for regression), "probabilities"}]}`. Errors in
OpenAI's body, the API key, the request size limit and `max_prompts_per_request` as for the generative API.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from fastapi import Depends, FastAPI
from pydantic import BaseModel, Field

from lmforge.config.schema import ServeConfig
from lmforge.data.classification import encode_pair
from lmforge.metrics import classifier_predictions
from lmforge.model.classifier import classifier_logits, head_of, threshold_of
from lmforge.model.inference import load_inference_model
from lmforge.model.tokenizer import load_inference_tokenizer
from lmforge.serve.http_app import ApiError, base_app


class ClassifyRequest(BaseModel):
    model: str | None = None
    input: str | list[str] = Field(min_length=1)
    input_pair: str | list[str] | None = None


def create_classify_app(cfg: ServeConfig, model_name: str, api_key: str | None,
                        loopback_names: list[str] | None = None) -> FastAPI:
    tokenizer, _ = load_inference_tokenizer(cfg.model)
    model = load_inference_model(cfg.model, tokenizer)
    problem_type, names = head_of(model, tokenizer)
    threshold = threshold_of(cfg.model.adapter_name_or_path or cfg.model.model_name_or_path)
    limit, lock = cfg.serve.max_prompts_per_request, threading.Lock()
    app, authorised = base_app(model_name, api_key, cfg.serve.max_request_bytes, loopback_names)

    def classify(texts: list[str], pairs: list[str] | None) -> list[dict[str, Any]]:
        length = min(tokenizer.model_max_length, 4096)
        rows = [encode_pair(tokenizer, t, p, length)[0] for t, p in zip(texts, pairs or [None] * len(texts),
                                                                        strict=True)]
        with lock:  # one forward pass at a time on the model
            logits = classifier_logits(model, tokenizer, rows, len(rows))
        return classifier_predictions(logits, problem_type, names, threshold)

    @app.get("/v1/models", dependencies=[Depends(authorised)])
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "lmforge",
                                            "task": "classification", "labels": names}]}

    @app.post("/v1/classify", dependencies=[Depends(authorised)])
    async def classify_endpoint(body: ClassifyRequest) -> dict[str, Any]:
        texts = [body.input] if isinstance(body.input, str) else body.input
        pairs = None if body.input_pair is None else (
            [body.input_pair] if isinstance(body.input_pair, str) else body.input_pair)
        if len(texts) > limit:
            raise ApiError(400, f"At most {limit} inputs per request (max_prompts_per_request), got {len(texts)}.",
                           param="input")
        if pairs is not None and len(pairs) != len(texts):
            raise ApiError(400, f"'input_pair' has {len(pairs)} texts for {len(texts)} inputs.", param="input_pair")
        rows = await asyncio.to_thread(classify, texts, pairs)
        data = []
        for i, row in enumerate(rows):
            key = {"regression": "value", "multi_label_classification": "labels"}.get(problem_type, "label")
            data.append({"index": i, key: row["predicted"], **({"probabilities": row["probabilities"]}
                                                                 if "probabilities" in row else {})})
        return {"object": "list", "model": model_name, "data": data}

    return app
