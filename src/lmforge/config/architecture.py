"""Which architecture a run builds: the base config of `model_type` (or of a model directory), and whether
`config_overrides` name real fields of it, checked before any data work. Only transformers' config classes are
read here (no weights, no model)."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from lmforge.config.model import ModelArguments
from lmforge.config.suggest import suggest
from lmforge.errors import ConfigError

if TYPE_CHECKING:  # transformers is imported where a config is read: checking keys must not wait for it
    from transformers import PretrainedConfig

# the config fields that hold a mixture of experts' number of experts per layer, by architecture
EXPERT_COUNTS = ("num_experts", "num_local_experts", "n_routed_experts")


def text_config(config: PretrainedConfig) -> PretrainedConfig:
    """The language model's config (a vision-language config nests it)."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def num_experts(config: PretrainedConfig) -> int | None:
    """Experts per layer of a mixture of experts; None for a dense model."""
    text = text_config(config)
    return next((getattr(text, k) for k in EXPERT_COUNTS if getattr(text, k, None)), None)


# checkpoints saved quantized whose layers are made dense as they load (`dequantize`): peft has no LoRA layer over
# compressed-tensors' packed weights, and its dense weights can also be fully fine-tuned
DEQUANTIZED_AT_LOAD = ("compressed-tensors",)


def checkpoint_quantization(config: PretrainedConfig) -> str | None:
    """The `quant_method` of a checkpoint saved quantized (gptq, awq, compressed-tensors, fp8, bitsandbytes, ...);
    None for one saved in full precision."""
    quantization = getattr(config, "quantization_config", None) or getattr(text_config(config),
                                                                           "quantization_config", None)
    if not quantization:
        return None
    method = quantization.get("quant_method") if isinstance(quantization, dict) else \
        getattr(quantization, "quant_method", None)
    return str(getattr(method, "value", method) or "unknown")


def saved_config(path: str | None) -> dict[str, Any] | None:
    """A local model directory's config.json as saved (None where there is none or it is unreadable): what a check
    can read without importing transformers."""
    config_file = os.path.join(path, "config.json") if path else ""
    if not os.path.isfile(config_file):
        return None
    try:
        with open(config_file, encoding="utf-8") as fh:
            saved = json.load(fh)
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def saved_unquantized(path: str | None) -> bool:
    """A local model directory whose config.json names no quantization (in it or a nested model's config)."""
    saved = saved_config(path)
    return saved is not None and not any(
        key == "quantization_config" or (isinstance(value, dict) and "quantization_config" in value)
        for key, value in saved.items())


def base_config(args: ModelArguments, local_only: bool = False) -> PretrainedConfig:
    """The model's config; `local_only`: from a local folder or the hub cache, never the network (a check that can
    wait for the model to load must not wait on the hub: a path that does not exist is retried there for seconds)."""
    from transformers import AutoConfig

    if args.model_type:
        try:
            return AutoConfig.for_model(args.model_type)
        except ValueError:
            from transformers.models.auto.configuration_auto import CONFIG_MAPPING

            raise ConfigError(f"Config error: 'model_type: {args.model_type}' is not an architecture transformers "
                              f"knows.{suggest(args.model_type, list(CONFIG_MAPPING.keys()))}") from None
    try:
        return AutoConfig.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code,
                                          revision=args.model_revision, cache_dir=args.cache_dir,
                                          local_files_only=local_only)
    except (OSError, ValueError) as err:
        raise ConfigError(f"Config error: could not load a model config from '{args.model_name_or_path}': "
                          f"{str(err).splitlines()[0]}") from None


def check_architecture(args: ModelArguments) -> None:
    """Fail before any data work if `model_type` or a `config_overrides` key does not exist."""
    if not args.from_scratch or not args.model_type:
        return
    base = base_config(args)
    unknown = [k for k in args.config_overrides if k not in base.to_dict() and not hasattr(base, k)]
    if unknown:
        raise ConfigError(f"Config error: config_overrides.{unknown[0]} is not a field of the '{base.model_type}' "
                          f"config.{suggest(unknown[0], [k for k in base.to_dict() if not k.startswith('_')])}")
