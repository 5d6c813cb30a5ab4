"""Passing a KV cache to a causal LM and reading it back, under the name the installed transformers uses.

transformers 5.2x renamed the forward argument and output field `past_key_values` to `cache` (the old name warns,
and will be removed); earlier releases know only `past_key_values`. Our own decoding loops (serving engine,
multiple-choice scoring) call the model's forward directly, so they ask the model which name it takes."""

from __future__ import annotations

import functools
import inspect
from typing import Any

from lmforge.model.moe import no_router_outputs


@functools.lru_cache(maxsize=64)
def _argument_name(forward_owner: type) -> str:
    parameters = inspect.signature(forward_owner.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _language_model(model: Any) -> Any:
    get_base = getattr(model, "get_base_model", None)  # a peft model forwards **kwargs to the model inside
    return get_base() if callable(get_base) else model


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """`{name: cache}` for `model(...)`: `cache` where its forward takes that name, `past_key_values` otherwise;
    and no router outputs for a mixture of experts (`no_router_outputs`: its router loss fails on decoding steps)."""
    lm = _language_model(model)
    return {_argument_name(type(lm)): cache, **no_router_outputs(lm)}


@functools.lru_cache(maxsize=64)
def _keeps_logits(forward_owner: type) -> bool:
    return "logits_to_keep" in inspect.signature(forward_owner.forward).parameters


def last_logits_only(model: Any, count: int = 1) -> dict[str, Any]:
    """`{"logits_to_keep": count}` where the model's forward takes it: the logits of the last `count` positions
    only. A prefill that samples the next token needs one (as `generate` does), scoring a completion its own
    positions, not a [batch, prompt + completion, vocabulary] tensor."""
    return {"logits_to_keep": count} if _keeps_logits(type(_language_model(model))) else {}


def output_cache(output: Any) -> Any:
    """The cache a forward returned (`cache`, or `past_key_values` in earlier transformers)."""
    for name in ("cache", "past_key_values"):
        if name in output.keys():
            return output[name]
    return None
