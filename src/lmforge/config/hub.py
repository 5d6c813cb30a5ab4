"""Where hub names point: the Hugging Face hub (or a mirror of it, `hf_endpoint`) or ModelScope (`hub: modelscope`,
or `$USE_MODELSCOPE_HUB=1`), resolved once when a config is loaded so that everything after it sees local paths.

- A mirror: `hf_endpoint` (or `$HF_ENDPOINT`) is set for huggingface_hub, which every transformers/datasets download
  goes through, in this process and the processes it starts.
- ModelScope: each model-like key (`model_name_or_path`, `tokenizer_name_or_path`, `adapter_name_or_path`,
  `ref_model`, `reward_model`) that is not a local directory becomes the directory ModelScope keeps it in: its local
  cache when it is there (`$MODELSCOPE_CACHE` or ~/.cache/modelscope/hub, `models/<org>/<name>`, or the older
  `<org>/<name>` layout), otherwise `modelscope.snapshot_download` (an optional install: `pip install modelscope`).
  Registry entries with `ms_hub_url` load through `MsDataset`. A model ModelScope does not have is a config error
  naming ModelScope.
"""

from __future__ import annotations

import os
from typing import Any

from lmforge.errors import ConfigError

MODEL_KEYS = (("model", "model_name_or_path"), ("model", "tokenizer_name_or_path"),
              ("model", "adapter_name_or_path"), ("finetuning", "ref_model"), ("rl", "reward_model"))


def modelscope_in_force(hub: str | None) -> bool:
    return hub == "modelscope" or os.environ.get("USE_MODELSCOPE_HUB", "").lower() in ("1", "true", "yes")


def hub_summary() -> str:
    """Which hub and endpoint are in force (for `lmforge env`)."""
    if modelscope_in_force(None):
        return f"modelscope (cache {modelscope_cache()})"
    endpoint = os.environ.get("HF_ENDPOINT")
    return f"huggingface ({endpoint})" if endpoint else "huggingface (https://huggingface.co)"


def use_endpoint(endpoint: str) -> None:
    """Every huggingface_hub call of this process (and of the processes it starts) goes to `endpoint`."""
    endpoint = endpoint.rstrip("/")
    os.environ["HF_ENDPOINT"] = endpoint
    try:
        from huggingface_hub import constants
    except ImportError:
        return
    constants.ENDPOINT = endpoint  # read when each download starts
    constants.HUGGINGFACE_CO_URL_TEMPLATE = endpoint + "/{repo_id}/resolve/{revision}/{filename}"


def modelscope_cache() -> str:
    return os.environ.get("MODELSCOPE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "modelscope", "hub")


def cached_modelscope_dir(repo_id: str) -> str | None:
    """The directory ModelScope's cache keeps `repo_id` in, if it is there (both of its layouts)."""
    root = modelscope_cache()
    for candidate in (os.path.join(root, "models", repo_id), os.path.join(root, repo_id)):
        if os.path.isfile(os.path.join(candidate, "config.json")) or \
                os.path.isfile(os.path.join(candidate, "adapter_config.json")) or \
                os.path.isfile(os.path.join(candidate, "tokenizer_config.json")):
            return candidate
    return None


def modelscope_path(repo_id: str, revision: str | None, key: str, source: str) -> str:
    """A ModelScope model id as a local directory: from the cache, else downloaded."""
    cached = cached_modelscope_dir(repo_id)
    if cached:
        return cached
    try:
        from modelscope import snapshot_download
    except ImportError:
        raise ConfigError(f"Config error ({source}): '{key}: {repo_id}' is to come from ModelScope (hub: "
                          "modelscope), which needs its client: pip install modelscope (it is not in ModelScope's "
                          f"local cache {modelscope_cache()}).") from None
    try:
        return snapshot_download(repo_id, revision=revision if revision not in (None, "main") else None)
    except Exception as err:  # noqa: BLE001 - the client raises its own types for unknown ids and network errors
        raise ConfigError(f"Config error ({source}): ModelScope has no model '{repo_id}' for '{key}' (or cannot be "
                          f"reached): {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def resolve_hubs(cfg: Any, hub: str | None, endpoint: str | None) -> None:
    """Apply the config's hub choice (see the module docstring) to `cfg` in place."""
    endpoint = endpoint or os.environ.get("HF_ENDPOINT")
    if endpoint:
        use_endpoint(endpoint)
    if not modelscope_in_force(hub):
        return
    os.environ["USE_MODELSCOPE_HUB"] = "1"  # the data registry and started processes follow the same hub
    revision = getattr(getattr(cfg, "model", None), "model_revision", None)
    for group, key in MODEL_KEYS:
        section = getattr(cfg, group, None)
        value = getattr(section, key, None) if section is not None else None
        if not value or os.path.exists(os.path.expanduser(value)) or value.startswith(("/", "./", "../", "~")):
            continue
        setattr(section, key, modelscope_path(value, revision, key, cfg.source))
