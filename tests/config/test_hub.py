"""Hub choice: ModelScope ids resolve to ModelScope's local cache (both layouts) before anything loads, a missing one
names ModelScope; a mirror endpoint reaches huggingface_hub; registry entries with only `ms_hub_url` follow the hub."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from lmforge.config import load_config
from lmforge.config.parse import load_command_config
from lmforge.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def hub_environment():
    """Loading a config with a hub choice sets the process environment (for the processes it starts): put it back.
    (Not with monkeypatch: its undo, run after this teardown, would restore what the config load had set.)"""
    saved = {k: os.environ.get(k) for k in ("USE_MODELSCOPE_HUB", "HF_ENDPOINT")}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture()
def modelscope_cache(tmp_path, monkeypatch):
    cache = tmp_path / "ms-cache"
    monkeypatch.setenv("MODELSCOPE_CACHE", str(cache))
    os.environ.pop("USE_MODELSCOPE_HUB", None)
    return cache


def sft(model: str, out, **extra) -> list[str]:
    return [f"model_name_or_path={model}", "stage=sft", "dataset=alpaca_en_demo", f"output_dir={out}",
            "dataset_dir=../shared/data/llamafactory_demo", *(f"{k}={v}" for k, v in extra.items())]


@pytest.mark.parametrize("layout", ["models/Qwen/tiny", "Qwen/tiny"])
def test_modelscope_ids_resolve_to_the_local_cache(tiny_model_dir, modelscope_cache, tmp_path, layout):
    shutil.copytree(tiny_model_dir, modelscope_cache / layout)
    cfg = load_config(None, sft("Qwen/tiny", tmp_path / "out", hub="modelscope"))
    assert cfg.model.model_name_or_path == str(modelscope_cache / layout)
    os.environ["USE_MODELSCOPE_HUB"] = "1"  # the environment switch does the same, for every command
    serve = load_command_config("serve", None, ["model_name_or_path=Qwen/tiny"])
    assert serve.model.model_name_or_path == str(modelscope_cache / layout)


def test_a_model_modelscope_lacks_is_a_config_error_naming_it(modelscope_cache, tmp_path):
    with pytest.raises(ConfigError, match="ModelScope") as err:
        load_config(None, sft("Qwen/not-there", tmp_path / "out", hub="modelscope"))
    message = str(err.value)
    assert "Qwen/not-there" in message and ("pip install modelscope" in message or "has no model" in message)


def test_the_huggingface_hub_leaves_ids_alone_and_a_mirror_reaches_huggingface_hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", constants.ENDPOINT)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", constants.HUGGINGFACE_CO_URL_TEMPLATE)
    os.environ.pop("HF_ENDPOINT", None)
    os.environ.pop("USE_MODELSCOPE_HUB", None)
    cfg = load_config(None, sft("Qwen/Qwen2.5-0.5B", tmp_path / "out", hf_endpoint="https://hf-mirror.com/"))
    assert cfg.model.model_name_or_path == "Qwen/Qwen2.5-0.5B"
    assert constants.ENDPOINT == "https://hf-mirror.com"
    assert constants.HUGGINGFACE_CO_URL_TEMPLATE.startswith("https://hf-mirror.com/{repo_id}/resolve/")
    from lmforge.env_info import environment

    assert environment()["hub"] == "huggingface (https://hf-mirror.com)"


def test_registry_entries_with_only_ms_hub_url_follow_the_hub(tmp_path):
    from lmforge.data.loading import load_raw
    from lmforge.data.registry import resolve_sources

    (tmp_path / "dataset_info.json").write_text(json.dumps({"ms_only": {"ms_hub_url": "AI-ModelScope/alpaca"}}))
    os.environ.pop("USE_MODELSCOPE_HUB", None)
    with pytest.raises(DataError, match="only has ms_hub_url: set `hub: modelscope`"):
        resolve_sources("ms_only", str(tmp_path))
    os.environ["USE_MODELSCOPE_HUB"] = "1"
    spec, = resolve_sources("ms_only", str(tmp_path))
    assert (spec.kind, spec.path) == ("modelscope", "AI-ModelScope/alpaca")
    if shutil.which("modelscope") is None:
        try:
            import modelscope  # noqa: F401
        except ImportError:
            with pytest.raises(DataError, match="pip install modelscope"):
                load_raw(spec, streaming=False)
