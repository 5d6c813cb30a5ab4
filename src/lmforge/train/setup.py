"""What every training stage sets on its model before training: the trained parameters' precision (float32
master weights), the parallel layout, gradient checkpointing for a loop of our own."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from transformers import TrainingArguments

from lmforge.config.schema import RunConfig
from lmforge.model.parallel import describe, load_kwargs, run_layout, trainer_parallelism
from lmforge.model.precision import set_master_weights
from lmforge.train.runtime.tracking import requested_trackers, transformers_trackers

logger = logging.getLogger(__name__)

def set_precision(model: torch.nn.Module, cfg: RunConfig) -> None:
    """Float32 master weights for what `full`/`freeze` trains (see model/precision.py); float8 matmuls with `fp8`."""
    f, t = cfg.finetuning, cfg.training
    set_master_weights(model, f.finetuning_type, autocast=bool(t.bf16 or t.fp16), pure_bf16=f.pure_bf16,
                       engine_keeps_masters=bool(t.deepspeed or t.fsdp))
    if f.fp8:
        from lmforge.model.fp8 import convert_to_fp8_training

        convert_to_fp8_training(model)


def parallel_split(cfg: RunConfig) -> dict:
    """How the model loads for this run's layout (tensor parallel, FSDP2 shards); the log says what one step really
    takes."""
    layout = run_layout(cfg)
    if layout.model_parallel:
        logger.info(describe(cfg, layout))
    return load_kwargs(layout)


def trainer_arguments(cfg: RunConfig, **changes: Any) -> TrainingArguments:
    """The arguments a Trainer gets: a copy of the validated `training` group with what the run derives from it (the
    layout's context/sequence parallelism, the trackers transformers feeds) and a stage's `changes`. The validated
    config is never written: the config a run saves and reports is the one it checked."""
    args = copy.copy(cfg.training)
    layout = run_layout(cfg)
    if layout.model_parallel:
        args.parallelism_config = trainer_parallelism(cfg, layout) or args.parallelism_config
    if "swanlab" in requested_trackers(cfg.training):  # SwanLab runs through its own callback
        args.report_to = transformers_trackers(cfg.training)
    for key, value in changes.items():
        setattr(args, key, value)
    return args


def enable_gradient_checkpointing(model: torch.nn.Module, kwargs: dict | None = None) -> None:
    """Recompute activations in the backward pass (what `gradient_checkpointing: true` does in the Trainer), for a
    loop of our own. Non-reentrant unless told otherwise, so frozen embeddings (LoRA) still pass gradients on."""
    kwargs = {"use_reentrant": False, **(kwargs or {})}
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if kwargs["use_reentrant"] and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    model.config.use_cache = False
