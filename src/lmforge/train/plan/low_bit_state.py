"""The state of the 8-bit and 4-bit AdamW optimizers, computed from their layouts: their steps cannot be traced over
fake tensors (bitsandbytes reads values back in its step; torchao compiles its step with torch.compile, which does
not run under the tracer's dispatch mode), but what they keep per weight is fixed by their code, and the figures are
checked against the bytes a real run's optimizer holds (tests/train/test_plan.py).

- bitsandbytes (`adamw_bnb_8bit`, `paged_adamw_8bit`, `adamw_8bit`, ...): each state a byte per weight, with a
  float32 scale per block of 256 weights and a 256-entry float32 code book per tensor; tensors under
  `min_8bit_size` (4,096) weights, and embeddings (transformers' Trainer registers them for 32-bit states), keep
  float32 states.
- torchao (`adamw_torch_8bit`, `adamw_torch_4bit`): each moment 8 or 4 bits per weight, a float32 scale per block
  (`block_size`, 256 as transformers passes it) and a 256- or 16-entry float32 code book, for tensors of at least
  4,096 weights that the block divides; the others keep moments in the weight's dtype; a float32 step per tensor.
"""

from __future__ import annotations

import math

import torch

BNB_BLOCK = 256


def low_bit_state_bytes(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> int | None:
    """The bytes `optimizer` (an 8/4-bit AdamW of bitsandbytes or torchao) keeps for `model` once stepped; None for
    another optimizer (it is traced)."""
    classes = {c.__name__ for c in type(optimizer).__mro__}
    module = type(optimizer).__module__
    params = list({id(p): p for g in optimizer.param_groups for p in g["params"] if p.requires_grad}.values())
    if module.startswith("bitsandbytes") and classes & {"Optimizer1State", "Optimizer2State"}:
        return _bitsandbytes(optimizer, model, params, states=2 if "Optimizer2State" in classes else 1)
    if module.startswith("torchao") and classes & {"AdamW8bit", "AdamW4bit", "Adam8bit", "Adam4bit"}:
        bits = 8 if classes & {"AdamW8bit", "Adam8bit"} else 4
        return _torchao(params, bits, int(getattr(optimizer, "block_size", 256)))
    return None


def _bitsandbytes(optimizer: torch.optim.Optimizer, model: torch.nn.Module, params: list[torch.Tensor],
                  states: int) -> int:
    args = getattr(optimizer, "args", None)
    eight_bit = getattr(args, "optim_bits", 32) == 8
    smallest = getattr(args, "min_8bit_size", 4096)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    total = 0
    for p in params:
        n = p.numel()
        if not eight_bit or n < smallest or id(p) in embeddings:
            total += states * 4 * n
        else:
            total += states * (n + 4 * math.ceil(n / BNB_BLOCK) + 4 * 256)
    return total


def _torchao(params: list[torch.Tensor], bits: int, block: int) -> int:
    total = 0
    for p in params:
        n = p.numel()
        if n >= 4096 and n % block == 0:
            moment = n * bits // 8 + 4 * (n // block) + 4 * 2**bits
        else:
            moment = n * p.element_size()
        total += 2 * moment + 4  # two moments and the step
    return total
