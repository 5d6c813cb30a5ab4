"""`lmforge bench MODEL|CONFIG --serve`: the OpenAI endpoint (`lmforge api`, its own process) under N streaming
clients that arrive at random (exponential gaps, fixed seed), once with continuous batching and once with static
batching, on the same model, prompts and arrival times. Reports completion tokens/s (from the first arrival to the
last token) and p50/p95 request latency, and checks that every stream's text equals the text the same request gets
alone (greedy), which the solo pass also measures.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import random
import socket
import statistics
import subprocess
import sys
import time
from importlib import resources
from typing import Any

from lmforge.config.parse import load_target_config
from lmforge.errors import ConfigError


def _questions(count: int) -> list[str]:
    """Distinct user questions: lmforge's held-out SFT prompts, numbered when more are asked for."""
    lines = resources.files("lmforge.resources").joinpath("sft_quickstart_heldout.jsonl").read_text().splitlines()
    base = [json.loads(line)["instruction"] for line in lines if line.strip()]
    return [base[i % len(base)] + (f" ({i // len(base)})" if i >= len(base) else "") for i in range(count)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Server:
    """`lmforge api` in its own process (as users run it: the clients' work does not share its interpreter) on a
    free loopback port, until the block ends."""

    def __init__(self, target: str | None, overrides: list[str]):
        self.port = _free_port()
        self.command = [sys.executable, "-m", "lmforge", "api", *([target] if target else []), *overrides,
                        f"port={self.port}", "host=127.0.0.1", "served_model_name=bench"]

    def __enter__(self) -> str:
        import httpx

        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"`{' '.join(self.command)}` exited {self.process.returncode}: "
                                   f"{self.process.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    return f"http://127.0.0.1:{self.port}/v1"
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"`{' '.join(self.command)}` did not answer /health within 300 s")
            time.sleep(0.2)

    def __exit__(self, *exc: Any) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def _one(client, url: str, question: str, max_tokens: int, delay: float, origin: float) -> dict[str, Any]:
    await asyncio.sleep(delay)
    arrived = time.perf_counter()
    body = {"model": "bench", "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    text, tokens, first = "", 0, None
    async with client.stream("POST", f"{url}/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices", []):
                piece = choice.get("delta", {}).get("content") or ""
                if piece and first is None:
                    first = time.perf_counter()
                text += piece
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    done = time.perf_counter()
    return {"text": text, "tokens": tokens, "arrived": arrived - origin, "finished": done - origin,
            "latency": done - arrived, "first_token": (first or done) - arrived}


async def _drive(url: str, questions: list[str], max_tokens: int, delays: list[float]) -> list[dict[str, Any]]:
    import httpx

    async with httpx.AsyncClient(timeout=600) as client:
        origin = time.perf_counter()
        return await asyncio.gather(*(_one(client, url, q, max_tokens, d, origin)
                                      for q, d in zip(questions, delays, strict=True)))


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = sorted(r["latency"] for r in results)
    span = max(r["finished"] for r in results) - min(r["arrived"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    return {"completion_tokens": tokens, "seconds": round(span, 3), "tokens_per_second": round(tokens / span, 1),
            "latency_p50": round(statistics.median(latencies), 3),
            "latency_p95": round(latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))], 3),
            "first_token_p50": round(statistics.median(r["first_token"] for r in results), 3)}


def compare_serving(target: str | None, overrides: list[str], clients: int = 16, max_tokens: int = 64,
                    mean_gap: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """Continuous vs static batching behind the API, same arrivals; plus the solo pass (one request at a time)."""
    missing = [name for name in ("fastapi", "uvicorn", "httpx") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"Config error: `lmforge bench --serve` needs {', '.join(missing)}: "
                          "pip install 'lmforge[serve]'")
    cfg = load_target_config("serve", target, overrides)
    if cfg.serve.infer_backend != "huggingface":
        raise ConfigError("Config error: `lmforge bench --serve` measures the huggingface engine's batching.")
    questions = _questions(clients)
    rng = random.Random(seed)
    delays, t = [], 0.0
    for _ in range(clients):
        delays.append(t)
        t += rng.expovariate(1 / mean_gap) if mean_gap > 0 else 0.0
    runs: dict[str, list[dict[str, Any]]] = {}
    with _Server(target, [*overrides, "continuous_batching=true"]) as url:
        runs["solo"] = [asyncio.run(_drive(url, [q], max_tokens, [0.0]))[0] for q in questions]  # one at a time
        runs["continuous batching"] = asyncio.run(_drive(url, questions, max_tokens, delays))
    with _Server(target, [*overrides, "continuous_batching=false"]) as url:
        runs["static batching"] = asyncio.run(_drive(url, questions, max_tokens, delays))
    solo_texts = [r["text"] for r in runs["solo"]]
    result: dict[str, Any] = {"clients": clients, "max_tokens": max_tokens, "mean_arrival_gap_s": mean_gap,
                              "max_batch_size": cfg.serve.max_batch_size, "model": cfg.model.model_name_or_path}
    for name, rs in runs.items():
        result[name] = _summary(rs)
        if name != "solo":
            result[name]["texts_equal_solo"] = sum(r["text"] == s for r, s in zip(rs, solo_texts, strict=True))
    solo_seconds = sum(r["latency"] for r in runs["solo"])
    result["solo"]["tokens_per_second"] = round(result["solo"]["completion_tokens"] / solo_seconds, 1)
    result["ratio"] = round(result["continuous batching"]["tokens_per_second"]
                            / result["static batching"]["tokens_per_second"], 2)
    return result


def report(r: dict[str, Any]) -> str:
    lines = [f"lmforge bench --serve: {r['clients']} streaming clients, mean arrival gap {r['mean_arrival_gap_s']} s, "
             f"max_tokens {r['max_tokens']}, greedy, max_batch_size {r['max_batch_size']}",
             f"  {'engine':<22}{'tokens/s':>10}{'p50 latency':>13}{'p95 latency':>13}{'p50 first token':>17}"
             f"{'text = solo':>13}"]
    for name in ("solo", "static batching", "continuous batching"):
        s = r[name]
        same = f"{s['texts_equal_solo']}/{r['clients']}" if "texts_equal_solo" in s else "-"
        lines.append(f"  {name:<22}{s['tokens_per_second']:>10,.1f}{s['latency_p50']:>12.2f}s{s['latency_p95']:>12.2f}s"
                     f"{s['first_token_p50']:>16.2f}s{same:>13}")
    lines.append(f"  continuous / static throughput: x{r['ratio']:.2f}")
    return "\n".join(lines)
