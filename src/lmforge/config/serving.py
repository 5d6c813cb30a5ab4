"""How `lmforge chat`, `lmforge api`, `lmforge webui` and `lmforge webchat` serve a model."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from lmforge.config.fields import option


def is_loopback(host: str) -> bool:
    """Whether `host` (an address to listen on, or a Host header's name) is this machine only: `localhost`, or a
    loopback address (127.0.0.0/8, ::1); a name that merely starts with "127." is not."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class ServeArguments:
    host: str = option(
        "127.0.0.1", "api/webui: the address the server listens on (loopback only by default; `0.0.0.0` for all).")
    port: int | None = option(None, "api/webui: the port (api 8000, webui/webchat 7860 when unset).")
    api_key: str | None = option(
        None, "api: requests must send `Authorization: Bearer KEY` (others get 401). Unset: $LMFORGE_API_KEY, or no "
        "key at all (allowed on a loopback `host` only, unless `allow_unauthenticated`).")
    allow_unauthenticated: bool = option(
        False, "api: serve a `host` other than loopback without an API key (anyone who reaches the port can use the "
        "model). Without it, such a setup is a config error.")
    allowed_hosts: list[str] = option(
        default_factory=list, help="api/webui: extra host names browsers may reach the server by (a reverse "
        "proxy's name). On a loopback `host`, requests whose Host or Origin header names anything else get 403, "
        "so a web page cannot reach the server through DNS rebinding.")
    served_model_name: str | None = option(
        None, "api: the model id listed by /v1/models (default: the model directory's name).")
    infer_backend: Literal["huggingface", "vllm"] = option(
        "huggingface", "Generation engine: transformers (any device), or vLLM where it is installed (CUDA).")
    max_batch_size: int = option(
        8, "huggingface backend: the most sequences decoded together as one batch (1: one request at a time, each "
        "decoded exactly as alone).")
    continuous_batching: bool = option(
        True, "huggingface backend: a request that arrives while a batch decodes joins it at the next step, and a "
        "finished one leaves at once. false: static batching (newcomers wait until the whole running batch is done).")
    max_model_len: int | None = option(
        None, "Longest prompt + completion in tokens (default: the model's `max_position_embeddings`).")
    max_request_bytes: int = option(
        8 * 1024 * 1024, "api: the largest request body accepted (bigger ones get 413).")
    max_prompts_per_request: int = option(
        64, "api: the most prompts one /v1/completions request may carry (more get 400).")
    system_prompt: str | None = option(None, "chat/webchat: the system message every conversation starts with.")
    vllm_gpu_memory_utilization: float = option(0.9, "vllm backend: fraction of GPU memory vLLM may use.")
    share: bool = option(
        False, "webui/webchat: also publish the page through a public Gradio link (needs `webui_auth`).")
    runs_dir: str = option(
        "saves", "webui: the folder whose runs the Runs tab lists (searched 4 levels deep), where new runs go and "
        "whose saved models the model pickers offer.")
    webui_auth: str | None = option(
        None, "webui/webchat: `user:password` the page asks for. Required when the page is reachable from other "
        "machines (`share: true` or a `host` other than loopback): the web UI starts training runs and reads local "
        "files. Unset: $LMFORGE_WEBUI_AUTH.")
