"""An importance matrix for llama.cpp's quantizer (`gguf_imatrix: true`), computed from the user's data.

llama.cpp's llama-imatrix runs a GGUF over text and keeps, for every weight matrix, the sum of the squares of its
inputs per input column and the number of tokens; its quantizer then weighs each column's rounding error by their
mean. lmforge computes the same statistic with the merged model in transformers, over the examples it trained on
(export/calibration.py), because llama-cpp-python binds the quantizer but not llama-imatrix; the values are handed to
`llama_model_quantize` directly, as llama-quantize hands over the file it reads. Like llama-imatrix by default, the
output layer is left out. MoE experts held as one 3-D parameter (transformers 5) are not linear modules here, so
their matrices are quantized without importance data, and the log says how many.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np
import torch

logger = logging.getLogger(__name__)


def importance_matrix(model: torch.nn.Module, sequences: Iterable[list[int]],
                      gguf_name: Callable[[str], str | None]) -> dict[str, np.ndarray]:
    """`{GGUF tensor name: mean squared input per column}` for the model's linear layers (the output layer left
    out), over the tokens of `sequences`; `gguf_name` maps a checkpoint tensor name to the GGUF one."""
    output = model.get_output_embeddings()
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def accumulate(name: str):
        def hook(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
            sums[name] = sums.get(name, 0) + x.square().sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return hook

    hooks = [module.register_forward_pre_hook(accumulate(name)) for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and module is not output]
    try:
        with torch.no_grad():
            for ids in sequences:
                model(input_ids=torch.tensor([ids], device=model.device), use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    matrix = {}
    for name, total in sums.items():
        target = gguf_name(f"{name}.weight")
        if target is not None:
            matrix[target] = (total / counts[name]).to(torch.float32).numpy()
    embeddings = {id(model.get_input_embeddings().weight), id(output.weight)}
    others = [n for n, p in model.named_parameters() if p.dim() >= 2 and id(p) not in embeddings
              and n.removesuffix(".weight") not in sums]
    tokens = sum(counts.values()) // max(len(counts), 1)
    logger.info("Importance matrix: %d weight matrices over %s tokens%s", len(matrix), f"{tokens:,}",
                f"; quantized without it: {len(others)} ({others[0]}, ...)" if others else "")
    return matrix
