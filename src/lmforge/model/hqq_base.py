"""A base model quantized by HQQ (Half-Quadratic Quantization: no calibration data, 1 to 8 bits in groups of 64
weights) for QLoRA, `quantization_method: hqq`. transformers 5 no longer quantizes to HQQ as it loads a checkpoint
(its quantizer raises "not available yet"), so the loaded model's decoder linears are replaced by the hqq package's
`HQQLinear`, the layer peft puts LoRA over (`peft.tuners.lora.hqq`). It runs on the CPU (hqq's PyTorch backend
dequantizes a layer's weight for each matmul) as on GPUs."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

HQQ_BITS = (1, 2, 3, 4, 8)
HQQ_GROUP_SIZE = 64


def quantize_with_hqq(model: torch.nn.Module, bits: int) -> int:
    """Replace every `nn.Linear` inside the decoder layers of `model` by HQQ's `bits`-bit layer (the embeddings, the
    output layer and any vision tower keep their weights, as transformers' HQQ integration left them); the layers
    compute in the model's dtype. Returns how many layers were quantized."""
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    from lmforge.model.decoder import decoder_layers

    _, layers = decoder_layers(model)
    config = BaseQuantizeConfig(nbits=bits, group_size=HQQ_GROUP_SIZE)
    dtype = next(layers.parameters()).dtype
    quantized = 0
    for layer in layers:
        for parent in list(layer.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.Linear):
                    device = str(child.weight.device)
                    setattr(parent, name, HQQLinear(child, config, compute_dtype=dtype, device=device))
                    quantized += 1
    return quantized

