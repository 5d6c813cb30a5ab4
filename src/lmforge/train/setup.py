"""What every training stage sets on its model before training: the trained parameters' precision (float32
master weights), the parallel layout, gradient checkpointing for a loop of our own."""

from __future__ import annotations

import logging

import torch

from lmforge.config.schema import RunConfig
from lmforge.model.parallel import describe, load_kwargs, run_layout, trainer_parallelism
from lmforge.model.precision import set_master_weights

logger = logging.getLogger(__name__)

def set_precision(model: torch.nn.Module, cfg: RunConfig) -> None:
    """Float32 master weights for what `full`/`freeze` trains (see model/precision.py)."""
    f, t = cfg.finetuning, cfg.training
    set_master_weights(model, f.finetuning_type, autocast=bool(t.bf16 or t.fp16), pure_bf16=f.pure_bf16,
                       engine_keeps_masters=bool(t.deepspeed or t.fsdp))


def parallel_split(cfg: RunConfig) -> dict:
    """How the model loads for this run's layout (tensor parallel, FSDP2 shards); the Trainer gets its context or
    sequence parallelism, and the log says what one step really takes."""
    layout = run_layout(cfg)
    if layout.model_parallel:
        cfg.training.parallelism_config = trainer_parallelism(cfg, layout) or cfg.training.parallelism_config
        logger.info(describe(cfg, layout))
    return load_kwargs(layout)


def enable_gradient_checkpointing(model: torch.nn.Module, kwargs: dict | None = None) -> None:
    """Recompute activations in the backward pass (what `gradient_checkpointing: true` does in the Trainer), for a
    loop of our own. Non-reentrant unless told otherwise, so frozen embeddings (LoRA) still pass gradients on."""
    kwargs = {"use_reentrant": False, **(kwargs or {})}
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if kwargs["use_reentrant"] and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    model.config.use_cache = False
