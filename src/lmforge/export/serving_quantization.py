"""`export_quantization`: the exported model's linear weights quantized for serving engines and saved as a
compressed-tensors checkpoint (vLLM, SGLang and transformers load it as it is), through the compressed-tensors
package: its schemes, its packing and its config, the format llm-compressor writes.

The weights are rounded to nearest on their own scales (per output channel; int4 per group of
`export_quantization_group_size` weights): no calibration data is needed, and activations stay as the engine
computes them (`int8`, `int4`: 16-bit activations; `fp8`: activations scaled per token at run time). AWQ and GPTQ,
which choose the rounding from calibration data, are llm-compressor's; it pins transformers <= 5.17, which lmforge
does not, so they are not offered here: export `export_quantization: none` and run llm-compressor in its own
environment on the result."""

from __future__ import annotations

import logging
from typing import Any

import torch

from lmforge.errors import ConfigError

logger = logging.getLogger(__name__)

# export_quantization -> (compressed-tensors preset, the format it is saved in)
SCHEMES = {"int8": ("W8A16", "pack-quantized"), "int4": ("W4A16", "pack-quantized"),
           "fp8": ("FP8_DYNAMIC", "float-quantized"), "gptq": ("W4A16", "pack-quantized")}


def quantize_for_serving(model: torch.nn.Module, method: str, group_size: int,
                         calibration: list[list[int]] | None = None) -> Any:
    """Quantize `model`'s linear layers (all but the output layer) in place by `method` (`gptq`: over the
    `calibration` token sequences); returns the compressed-tensors compressor that writes them packed
    (`compress_model`) and their config (`update_config`)."""
    try:
        from compressed_tensors.compressors import ModelCompressor
        from compressed_tensors.quantization import (
            QuantizationConfig,
            QuantizationStatus,
            apply_quantization_config,
            preset_name_to_scheme,
        )
    except ImportError:
        raise ConfigError(f"Config error: 'export_quantization: {method}' writes a compressed-tensors checkpoint: "
                          "pip install compressed-tensors") from None
    preset, quantization_format = SCHEMES[method]
    scheme = preset_name_to_scheme(preset, ["Linear"])
    if scheme.weights.strategy == "group":
        scheme.weights.group_size = group_size
    skipped = _indivisible(model, scheme.weights)
    gptq_params = {}
    if method == "gptq":  # before the config is applied: its forward would fake-quantize with unset scales
        from lmforge.export.gptq import gptq_quantize_model

        gptq_params = gptq_quantize_model(model, calibration or [], scheme.weights, set(skipped))
    apply_quantization_config(model, QuantizationConfig(
        config_groups={"group_0": scheme}, ignore=["lm_head", *skipped],
        quantization_status=QuantizationStatus.INITIALIZED))
    quantized = 0
    for name, module in model.named_modules():
        if getattr(module, "quantization_scheme", None) is not None:
            if name in gptq_params:
                _copy_weight_scales(module, *gptq_params[name])
            else:
                _set_weight_scales(module, module.quantization_scheme.weights)
            quantized += 1
    logger.info("export_quantization %s: %d linear layers in %s (compressed-tensors %s, %s)%s", method, quantized,
                preset, quantization_format, "GPTQ" if gptq_params else "round to nearest",
                f"; {len(skipped)} left unquantized (sizes the group does not divide)" if skipped else "")
    return ModelCompressor.from_pretrained_model(model, quantization_format=quantization_format)


def _indivisible(model: torch.nn.Module, weights: Any) -> list[str]:
    """Linear layers whose input size the group does not divide (they stay unquantized, named in `ignore`)."""
    if weights.strategy != "group":
        return []
    return [name for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m.in_features % weights.group_size]


def _copy_weight_scales(module: torch.nn.Module, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
    module.weight_scale.data.copy_(scale.reshape(module.weight_scale.shape).to(module.weight_scale.dtype))
    if hasattr(module, "weight_zero_point"):
        module.weight_zero_point.data.copy_(zero_point.reshape(module.weight_zero_point.shape))


def _set_weight_scales(module: torch.nn.Module, weights: Any) -> None:
    """The weight's scale (and zero point) from its range: per output channel, or per group of the input."""
    from compressed_tensors.quantization.utils import calculate_qparams

    weight = module.weight.detach().float()
    if weights.strategy == "group":
        weight = weight.reshape(weight.shape[0], -1, weights.group_size)
    low, high = weight.amin(-1), weight.amax(-1)
    _copy_weight_scales(module, *calculate_qparams(low, high, weights))
