"""Chat requests to an OpenAI-compatible endpoint: concurrent, retried on 429/5xx/timeouts with exponential backoff,
every failure counted by its status, usage summed."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

RETRIED = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failures: Counter = field(default_factory=Counter)  # status (or "timeout", "connection") -> count
    retries: int = 0

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class RequestFailed(Exception):
    def __init__(self, status: str, detail: str):
        super().__init__(f"{status}: {detail}")
        self.status = status


class ChatClient:
    def __init__(self, base_url: str, model: str, api_key: str | None, timeout: float, max_retries: int,
                 backoff: float = 0.5):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)
        self.model, self.max_retries, self.backoff = model, max_retries, backoff
        self.usage = Usage()

    async def chat(self, messages: list[dict], **params: Any) -> dict[str, Any]:
        """The first choice's message (with `reasoning_content` when the endpoint returns it); RequestFailed after
        the retries (each failed attempt counted by status)."""
        for attempt in range(self.max_retries + 1):
            try:
                reply = await self.client.post("/chat/completions", json={"model": self.model, "messages": messages,
                                                                          **params})
                status = str(reply.status_code)
                if reply.status_code == 200:
                    body = reply.json()
                    usage = body.get("usage") or {}
                    self.usage.prompt_tokens += int(usage.get("prompt_tokens") or 0)
                    self.usage.completion_tokens += int(usage.get("completion_tokens") or 0)
                    return body["choices"][0]["message"]
                detail = reply.text[:200]
                retry = reply.status_code in RETRIED
            except httpx.TimeoutException as err:
                status, detail, retry = "timeout", str(err), True
            except httpx.TransportError as err:
                status, detail, retry = "connection", str(err), True
            self.usage.failures[status] += 1
            if not retry or attempt == self.max_retries:
                raise RequestFailed(status, detail)
            self.usage.retries += 1
            await asyncio.sleep(self.backoff * 2 ** attempt * (0.5 + random.random()))
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self.client.aclose()
