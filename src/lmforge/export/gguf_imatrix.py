"""An importance matrix for llama.cpp's quantizer (`gguf_imatrix: true`), computed from the user's data.

llama.cpp's llama-imatrix runs a GGUF over text and keeps, for every weight matrix, the sum of the squares of its
inputs per input column and the number of tokens; its quantizer then weighs each column's rounding error by their
mean. lmforge computes the same statistic with the merged model in transformers, over the examples it trained on
(tokenized with the run's template), because llama-cpp-python binds the quantizer but not llama-imatrix; the values
are handed to `llama_model_quantize` directly, as llama-quantize hands over the file it reads. Like llama-imatrix by
default, the output layer is left out. MoE experts held as one 3-D parameter (transformers 5) are not linear modules
here, so their matrices are quantized without importance data, and the log says how many.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable

import numpy as np
import torch
import yaml

from lmforge.config.data import DataArguments
from lmforge.config.schema import ExportConfig
from lmforge.config.validate import run_config_file
from lmforge.errors import DataError

logger = logging.getLogger(__name__)


def calibration_data(cfg: ExportConfig) -> tuple[DataArguments, str]:
    """The data to compute the matrix over and its stage: the export's `dataset` when set, else the data keys of
    the exported run's lmforge_config.yaml (its dataset, dataset_dir, template, cutoff_len, ...)."""
    if cfg.data.dataset:
        return cfg.data, "sft"
    path = run_config_file(cfg)
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    flat = {k: v for section in raw.values() if isinstance(section, dict) for k, v in section.items()}
    flat.update({k: v for k, v in raw.items() if not isinstance(v, dict)})
    known = {f.name for f in dataclasses.fields(DataArguments)}
    data = dataclasses.replace(cfg.data, **{k: v for k, v in flat.items() if k in known})
    logger.info("Importance matrix data: %s (from %s)", data.dataset, path)
    return data, str(flat.get("stage", "sft"))


def calibration_tokens(cfg: ExportConfig, tokenizer) -> list[list[int]]:
    """Up to `gguf_imatrix_samples` token sequences of the calibration data, as the model trained on them."""
    from lmforge.data.examples import build_examples
    from lmforge.data.pretrain import build_pretrain_data

    data, stage = calibration_data(cfg)
    if data.max_samples is None:  # records enough for the examples asked (each record gives one, unless skipped)
        data = dataclasses.replace(data, max_samples=cfg.export.gguf_imatrix_samples)
    if stage == "pt":
        rows = build_pretrain_data(data, tokenizer, seed=0).train
    else:  # the conversations of any later stage's data, rendered by the template as SFT examples
        rows = build_examples(data, tokenizer, seed=0, kind="sft").train
    count = min(len(rows), cfg.export.gguf_imatrix_samples)
    if count == 0:
        raise DataError(f"Data error: 'gguf_imatrix': the data '{data.dataset}' has no usable example.")
    return [list(rows[i]["input_ids"]) for i in range(count)]


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
