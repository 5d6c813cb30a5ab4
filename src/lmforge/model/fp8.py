"""FP8 training (`fp8: true`): the decoder layers' linear matmuls run in float8 through torchao's float8 training
(`convert_to_float8_training`: inputs, weights and output gradients cast to float8 with dynamic tensor-wise scales
at each matmul, the weights themselves kept in their own dtype, so the optimizer, checkpoints and the saved model are
unchanged). The speed-up is a CUDA GPU's float8 tensor cores (compute capability 8.9: L4, RTX 4090, H100 and newer);
an older GPU has none and is a config error; on the CPU torch emulates the float8 matmul (no faster, for testing a
config). Embeddings, the output layer and any vision tower stay in bf16, as torchao's own recipes leave them."""

from __future__ import annotations

import importlib.util
import logging

import torch

from lmforge.errors import ConfigError

logger = logging.getLogger(__name__)

FP8_CAPABILITY = (8, 9)


def check_fp8_device() -> None:
    """A config error where FP8 training cannot run: no torchao, or a CUDA GPU without float8 tensor cores. (A plan
    answers for the GPUs it is made for, not for this machine's.)"""
    from lmforge.device import planning

    if planning():
        return
    if importlib.util.find_spec("torchao") is None:
        raise ConfigError("Config error: 'fp8: true' trains through torchao's float8 training: pip install torchao")
    if torch.cuda.is_available():
        capability = torch.cuda.get_device_capability()
        if capability < FP8_CAPABILITY:
            raise ConfigError(
                f"Config error: 'fp8: true' needs float8 tensor cores (CUDA compute capability 8.9: L4, RTX 4090, "
                f"H100 or newer); this {torch.cuda.get_device_name()} is {capability[0]}.{capability[1]}. Train in "
                "bf16 instead (drop 'fp8').")
    else:
        logger.warning("fp8: no CUDA GPU, so torch emulates the float8 matmuls on the CPU: the numbers of an FP8 run, "
                       "none of its speed.")


def convert_to_fp8_training(model: torch.nn.Module) -> int:
    """Swap the linear layers inside the decoder layers of `model` for torchao's `Float8Linear` (those whose sizes
    are multiples of 16, which float8 matmuls need). Returns how many were swapped."""
    from torchao.float8 import convert_to_float8_training

    from lmforge.model.decoder import decoder_layers

    check_fp8_device()
    prefix = decoder_layers(model)[0] + "."
    swapped: list[str] = []

    def in_decoder_layers(module: torch.nn.Module, name: str) -> bool:
        if not (isinstance(module, torch.nn.Linear) and name.startswith(prefix)):
            return False
        if module.in_features % 16 or module.out_features % 16:
            return False
        swapped.append(name)
        return True

    convert_to_float8_training(model, module_filter_fn=in_decoder_layers)
    logger.info("fp8: %d linear layers of the decoder compute in float8 (torchao, tensor-wise dynamic scaling)",
                len(swapped))
    return len(swapped)
