"""Checkpoints of a model split over the processes as it loaded (tensor parallel, FSDP2 by transformers), and the
loading of saved weights into any model, split or not (in the layout the model holds them: `weight_layout`).

Why our own: transformers' Trainer refuses to checkpoint the optimizer of such a model ("Resuming is not supported
for models sharded at load time"), so a run could not resume. torch's distributed state-dict API gathers the
sharded (DTensor) optimizer state into ordinary full tensors and scatters them back into any layout: a checkpoint
holds one plain `optimizer.pt` beside the full model weights the Trainer already saves, the scheduler and each
process's RNG state, and resuming continues the same run exactly.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from safetensors.torch import load_file

from lmforge.model.weight_layout import in_model_layout

OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"


def is_split_model(model: Any) -> bool:
    return bool(getattr(model, "is_distributed_loading_by_transformers", False))


def _torch_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the torch optimizer


def save_split_state(trainer: Any, output_dir: str) -> None:
    """Every process takes part in the gather; the first writes the files (RNG: one file per process)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    state = get_optimizer_state_dict(trainer.model, _torch_optimizer(trainer.optimizer),
                                     options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if trainer.args.should_save:
        torch.save(state, os.path.join(output_dir, OPTIMIZER_FILE))
        torch.save(trainer.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_FILE))
    trainer._save_rng_state(output_dir)


def cast_saved_weights(directory: str, dtype: torch.dtype) -> None:
    """Rewrite the weight files `save_pretrained` wrote in `directory` (a staging directory) in `dtype`.

    Why after the write: transformers gathers an FSDP2-sharded model's weights itself as it saves and ignores the
    (cast) state dict it is given, so the float32 master weights reach the files; this brings them to the dtype
    the run saves in, as on one process."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    for name in sorted(os.listdir(directory)):
        if not (name.startswith("model") and name.endswith(".safetensors")):
            continue
        path = os.path.join(directory, name)
        with safe_open(path, "pt") as handle:
            metadata = handle.metadata()
        state = load_file(path)
        if all(t.dtype == dtype or not t.is_floating_point() for t in state.values()):
            continue
        save_file({k: t.to(dtype) if t.is_floating_point() else t for k, t in state.items()}, path, metadata)


def load_saved_weights(model: torch.nn.Module, directory: str) -> None:
    """The weights `save_pretrained` wrote into `directory`, into `model`: a LoRA adapter, or the full model (one or
    several safetensors files), scattered into the shards of a model split over the processes. A tied output layer
    is not in the files."""
    adapter = os.path.join(directory, "adapter_model.safetensors")
    if os.path.isfile(adapter):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(adapter))
        return
    files = sorted(f for f in os.listdir(directory) if f.startswith("model") and f.endswith(".safetensors"))
    if not files:
        raise RuntimeError(f"checkpoint {directory} holds no model weights (model*.safetensors)")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(os.path.join(directory, name)))
    state = in_model_layout(model, state)  # e.g. per-expert files into fused expert weights
    if is_split_model(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        result = set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))
        missing, unexpected = result.missing_keys, result.unexpected_keys
    else:
        missing, unexpected = model.load_state_dict(state, strict=False)
    missing = sorted(k for k in missing if "lm_head" not in k)
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {directory} does not match the model: missing {missing[:3]}, unexpected "
                           f"{sorted(unexpected)[:3]}")


def load_split_state(trainer: Any, checkpoint: str) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    state = torch.load(os.path.join(checkpoint, OPTIMIZER_FILE), map_location="cpu", weights_only=False)
    set_optimizer_state_dict(trainer.model, _torch_optimizer(trainer.optimizer), state,
                             options=StateDictOptions(full_state_dict=True))
    trainer.lr_scheduler.load_state_dict(torch.load(os.path.join(checkpoint, SCHEDULER_FILE), weights_only=False))
