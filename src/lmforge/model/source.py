"""Where a model comes from: a folder here, or a hub id (cached, or fetched)."""

from __future__ import annotations

import os

from lmforge.data.registry import hub_lookup


def model_not_found(name_or_path: str, cache_dir: str | None = None) -> str | None:
    """Why `name_or_path` is neither a folder here nor a hub model that can be fetched now; None where it may load
    (a folder, a hub id in the cache or found on the hub; offline, transformers says what is missing at once).
    Asked once, without retries: a misspelt or not-yet-written folder (`saves/quickstart` before the pretraining
    quickstart) reads as a hub id, which transformers retries for over a minute where the hub cannot be reached."""
    from huggingface_hub import constants

    if os.path.isdir(os.path.expanduser(name_or_path)) or name_or_path.count("/") != 1:
        return None
    cached = os.path.join(cache_dir or constants.HF_HUB_CACHE, f"models--{name_or_path.replace('/', '--')}")
    if os.path.isdir(cached):
        return None
    status, why = hub_lookup(name_or_path, "model")
    if status == "missing":
        return "there is no such folder here, nor a model of that name on the hub"
    if status == "unreachable":
        return (f"there is no such folder here, and the hub could not be reached to look for a model of that name "
                f"({why})")
    return None
