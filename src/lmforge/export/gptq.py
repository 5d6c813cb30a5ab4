"""GPTQ (Frantar et al., 2022) for `export_quantization: gptq`: W4A16 in groups, written as the compressed-tensors
checkpoint llm-compressor's GPTQ writes (vLLM and SGLang load it; transformers too).

Why lmforge's own: llm-compressor 0.14 pins transformers <= 5.17 and compressed-tensors 0.19, and GPTQModel 7 needs
torch >= 2.14.1 and builds CUDA extensions; lmforge's stack is past the first and its CPU installs before the second.
The algorithm follows the paper and llm-compressor's `gptq_quantize`: per linear layer, the Hessian of the layer's
squared output error, H = 2/n sum x x^T over the calibration tokens' inputs, dampened by 1 % of its mean diagonal;
columns quantized left to right in blocks of 128, each column's rounding error spread over the columns not yet
quantized through the Cholesky factor of H^-1; a group's scale taken from its (already corrected) weights when the
group starts. The rounding itself is compressed-tensors' (`fake_quantize`), so the packed checkpoint holds exactly
these values.

Layers are quantized in order, each from the inputs the already quantized layers before it produce: one forward of
the model captures the first layer's inputs and every layer's masks and positions, then each layer runs twice per
example (its inputs' Hessians, then its quantized outputs for the next layer), as llm-compressor's sequential
pipeline does.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

logger = logging.getLogger(__name__)

BLOCK = 128  # columns updated together (the paper's lazy batch)
DAMPENING = 0.01  # of the Hessian's mean diagonal


def gptq_quantize_model(model: torch.nn.Module, sequences: list[list[int]], args: Any,
                        skip: set[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Quantize every linear layer of the decoder layers (all but `skip`) in place by GPTQ with the
    compressed-tensors `args` (group strategy); returns {module name: (scale, zero point)} for the packer."""
    from lmforge.model.decoder import decoder_layers

    prefix, layers = decoder_layers(model)
    hidden, layer_kwargs = _layer_inputs(model, layers, sequences)
    params: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    errors = []
    for index, layer in enumerate(layers):
        linears = {f"{prefix}.{index}.{name}": m for name, m in layer.named_modules()
                   if isinstance(m, torch.nn.Linear) and f"{prefix}.{index}.{name}" not in skip}
        hessians = _hessians(layer, linears, hidden, layer_kwargs[index])
        for name, module in linears.items():
            before = module.weight.detach().clone()
            scale, zero_point = gptq_quantize_weight(module.weight.data, hessians[name], args)
            params[name] = (scale, zero_point)
            errors.append(_relative_output_error(before, module.weight.detach(), hessians[name]))
        with torch.no_grad():  # the next layer's inputs, from this layer as quantized
            hidden = [_hidden_states(layer(h, **kw)) for h, kw in zip(hidden, layer_kwargs[index], strict=True)]
    logger.info("GPTQ: %d linear layers over %d calibration examples (%s tokens); relative output error on them: "
                "mean %.4f, max %.4f", len(params), len(sequences), f"{sum(map(len, sequences)):,}",
                sum(errors) / max(len(errors), 1), max(errors, default=0.0))
    return params


def _layer_inputs(model: torch.nn.Module, layers: torch.nn.ModuleList, sequences: list[list[int]]
                  ) -> tuple[list[torch.Tensor], list[list[dict]]]:
    """One forward of the unquantized model per sequence: the first layer's hidden states, and every layer's other
    arguments (masks, positions, rotary embeddings: they depend on the tokens only, and differ per layer where
    sliding and full attention alternate)."""
    first: list[torch.Tensor] = []
    kwargs: list[list[dict]] = [[] for _ in layers]

    def capture(index: int):
        def hook(_module, args, call_kwargs):
            call_kwargs = dict(call_kwargs)
            states = args[0] if args else call_kwargs.get("hidden_states")
            call_kwargs.pop("hidden_states", None)
            kwargs[index].append(call_kwargs)
            if index == 0:
                first.append(states.detach())
        return hook

    hooks = [layer.register_forward_pre_hook(capture(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            for ids in sequences:
                model(input_ids=torch.tensor([ids], device=next(model.parameters()).device), use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    return first, kwargs


def _hidden_states(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _hessians(layer: torch.nn.Module, linears: dict[str, torch.nn.Linear], hidden: list[torch.Tensor],
              kwargs: list[dict]) -> dict[str, torch.Tensor]:
    """H = 2/n sum x x^T of each linear's inputs over the calibration tokens, running `layer` on its inputs."""
    sums = {name: [torch.zeros(m.in_features, m.in_features, dtype=torch.float32, device=m.weight.device), 0]
            for name, m in linears.items()}

    def accumulate(name: str):
        def hook(_module, inputs):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).to(torch.float32)
            sums[name][0] += x.T @ x
            sums[name][1] += x.shape[0]
        return hook

    hooks = [m.register_forward_pre_hook(accumulate(name)) for name, m in linears.items()]
    try:
        with torch.no_grad():
            for states, call_kwargs in zip(hidden, kwargs, strict=True):
                layer(states, **call_kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: (2 / max(n, 1)) * total for name, (total, n) in sums.items()}


def gptq_quantize_weight(weight: torch.Tensor, hessian: torch.Tensor, args: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace `weight` ([out, in]) by its GPTQ-rounded values on a grid of `args` (compressed-tensors
    QuantizationArgs, group strategy); returns the (scale, zero point) of each [out, group]."""
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils import calculate_qparams

    columns, group = weight.shape[1], args.group_size
    column_args = args.model_copy(update={"strategy": "channel", "group_size": None})
    w = weight.detach().to(torch.float32).clone()
    h = hessian.clone()
    dead = torch.diag(h) == 0  # inputs that were always zero: any value computes the same, so quantize zeros
    h[dead, dead] = 1
    w[:, dead] = 0
    h += DAMPENING * torch.mean(torch.diag(h)) * torch.eye(columns, dtype=h.dtype, device=h.device)
    h_inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)

    groups = math.ceil(columns / group)
    scales, zero_points = [], []
    quantized = torch.zeros_like(w)
    for start in range(0, columns, BLOCK):
        end = min(start + BLOCK, columns)
        block, block_inv = w[:, start:end].clone(), h_inv[start:end, start:end]
        errors = torch.zeros_like(block)
        for i in range(end - start):
            column = start + i
            if column % group == 0:  # the group's scale from its weights as corrected so far
                span = torch.cat([block[:, i:], w[:, end:]], dim=1)[:, :group]
                scale, zero_point = calculate_qparams(span.amin(1), span.amax(1), args)
                scales.append(scale.reshape(-1, 1))
                zero_points.append(zero_point.reshape(-1, 1))
            value = block[:, i]
            q = fake_quantize(value.unsqueeze(1), scales[-1], zero_points[-1], column_args)[:, 0]
            quantized[:, column] = q
            error = (value - q) / block_inv[i, i]
            block[:, i:] -= error.unsqueeze(1) @ block_inv[i, i:].unsqueeze(0)
            errors[:, i] = error
        w[:, end:] -= errors @ h_inv[start:end, end:]
    assert len(scales) == groups
    weight.copy_(quantized.to(weight.dtype))
    return torch.cat(scales, dim=1), torch.cat(zero_points, dim=1)


def _relative_output_error(before: torch.Tensor, after: torch.Tensor, hessian: torch.Tensor) -> float:
    """tr(dW H dW^T) / tr(W H W^T): the layer's squared output error on the calibration inputs, relative."""
    delta, w, h = (after - before).to(torch.float64), before.to(torch.float64), hessian.to(torch.float64)
    return float(torch.einsum("oi,ij,oj->", delta, h, delta) / torch.einsum("oi,ij,oj->", w, h, w))
