"""Master weights: what precision the trained parameters live in, and what precision the result is saved in.

A bf16/fp16 checkpoint loaded as is and trained by a plain optimizer loses every update smaller than half a step of
its format (for bf16, 2^-8 of the weight): at fine-tuning learning rates most updates vanish. Mixed precision keeps
float32 master weights and computes under autocast; the result is saved in the checkpoint's own dtype.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

logger = logging.getLogger(__name__)

HALF = (torch.bfloat16, torch.float16)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def set_master_weights(model: torch.nn.Module, finetuning_type: str, autocast: bool, pure_bf16: bool = False,
                       engine_keeps_masters: bool = False) -> None:
    """Trainable half-precision parameters to float32 for `full`/`freeze` (LoRA adapters are float32 already).

    Frozen parameters stay in half precision under autocast (bf16/fp16 training); without autocast the whole model
    is float32, since mixed dtypes would meet in one matmul. `pure_bf16` trains bfloat16 weights directly (less
    memory, updates below a bf16 step are lost). DeepSpeed and FSDP keep float32 masters of their own: nothing is
    doubled there."""
    if finetuning_type == "lora":
        return
    if pure_bf16:
        logger.warning("pure_bf16: the weights are trained in bfloat16 without float32 master copies; updates smaller "
                       "than a bfloat16 step (2^-8 of a weight) are lost.")
        model.to(torch.bfloat16)
        return
    if engine_keeps_masters:
        return
    cast = [p for p in model.parameters() if p.dtype in HALF and (p.requires_grad or not autocast)]
    if cast:
        logger.info("Master weights: %d %s parameter tensors trained in float32%s", len(cast),
                    str(cast[0].dtype).removeprefix("torch."),
                    " under autocast" if autocast else " (no bf16/fp16 autocast: the whole model)")
    if any(hasattr(p, "full_tensor") for p in cast):
        # split over processes (DTensor): `.data` cannot change a DTensor's dtype; the module conversion swaps them
        model.to(torch.float32)
        return
    for param in cast:
        param.data = param.data.float()


def cast_state_dict(state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """`state_dict` with its floating tensors in `dtype` (tied tensors stay one tensor)."""
    converted: dict[int, torch.Tensor] = {}
    out = {}
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() and tensor.dtype != dtype:
            tensor = converted.setdefault(id(tensor), tensor.to(dtype))
        out[name] = tensor
    return out


def config_dtype(model_or_config: Any) -> torch.dtype | None:
    """The dtype a model's config (or the config given) says its checkpoint was saved in (None when it says
    nothing)."""
    value = getattr(getattr(model_or_config, "config", model_or_config), "dtype", None)
    if isinstance(value, str):
        return DTYPES.get(value.removeprefix("torch."))
    return value if isinstance(value, torch.dtype) else None


def record_saved_dtype(model: torch.nn.Module, directory: str, dtype: torch.dtype) -> None:
    """Rewrite the config.json saved in `directory` to say `dtype` (save_pretrained records the dtype of the
    float32 master weights in memory, not that of the cast state dict it was given)."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        return
    trained = model.config.dtype
    model.config.dtype = str(dtype).removeprefix("torch.")
    try:
        model.config.to_json_file(path)
    finally:
        model.config.dtype = trained
