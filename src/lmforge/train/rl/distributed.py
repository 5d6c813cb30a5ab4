"""The online RL loop on several processes (torchrun, `nproc_per_node`): one global batch, whatever the process count.

- Each process samples and scores its share of a step's prompts (whole GRPO groups), then the rollout is gathered,
  so every process holds all of it: advantages (group or batch statistics, PPO's whitening) are computed on the
  whole rollout, identically everywhere.
- Completions are sampled with one generator per row, seeded by (seed, step, row): a process samples exactly the
  rows one process sampling the whole rollout would.
- Each global mini-batch (`per_device_train_batch_size` x processes rows of one permutation of the rollout) is split
  between the processes; each divides its loss by the global mini-batch's (or optimizer step's) count of tokens or
  rows over the process count, and the gradients are averaged (the DDP rule) before one optimizer step that is
  therefore the same everywhere, and the same as one process training the whole mini-batch.
- Logs and checkpoints are written by the first process; the others wait for it.

With `data_shard_size`, transformers loads the policy (and reference) sharded with FSDP2: its parameters are
DTensors whose gradients FSDP2 reduce-scatters and averages itself; only the rest (PPO's value head, LoRA adapters
added after sharding) is averaged here. Every process then runs every forward pass in step (sampling continues
until all processes' rows are done), and saving gathers the full weights and optimizer state collectively.

Why not accelerate's DDP wrapper: the loop already computes the exact global normalisers, and averaging the
gradients of every trainable parameter (policy, LoRA adapters, PPO's value head) once per optimizer step is the whole
of what DDP adds here; with gloo on CPUs and NCCL on GPUs alike.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


def world() -> tuple[int, int]:
    """(rank, process count): (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(obj: Any) -> list[Any]:
    """Every process's `obj` (tensors on the CPU), in rank order."""
    out: list[Any] = [None] * world()[1]
    dist.all_gather_object(out, obj)
    return out


def is_sharded(tensor: torch.Tensor | None) -> bool:
    """A DTensor: a parameter (or gradient) FSDP2 shards, whose gradients it reduces itself."""
    return isinstance(tensor, DTensor)


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Gradients averaged over the processes (a process whose share of a mini-batch was empty adds zeros); those of
    parameters FSDP2 shards (`data_shard_size`) are already averaged by its reduce-scatter."""
    _, size = world()
    if size == 1:
        return
    for p in params:
        if is_sharded(p):
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad.div_(size)


def any_process(flag: bool) -> bool:
    """True on every process when it is true on one (a stop signal, a non-finite loss)."""
    if world()[1] == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean_over_processes(values: dict[str, float]) -> dict[str, float]:
    """Each statistic averaged over the processes (each reports the same keys)."""
    if world()[1] == 1 or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(tensor)
    return {k: float(v) / world()[1] for k, v in zip(keys, tensor.tolist(), strict=True)}


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def merge_rollouts(pieces: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """The processes' rollout pieces as one: prompts left-padded to the widest, completions (and per-token values)
    right-padded to the longest, rows in rank order."""
    width = max(p["prompt_width"] for p in pieces)
    length = max(p["completion_mask"].shape[1] for p in pieces)

    def prompt(t: torch.Tensor, w: int, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (width - w, 0), value=value)

    def completion(t: torch.Tensor, value: float = 0) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, length - t.shape[1]), value=value)

    merged: dict[str, Any] = {"prompt_width": width}
    ids, masks = [], []
    for p in pieces:
        w = p["prompt_width"]
        ids.append(torch.cat([prompt(p["input_ids"][:, :w], w, pad_id), completion(p["input_ids"][:, w:], pad_id)], 1))
        masks.append(torch.cat([prompt(p["attention_mask"][:, :w], w, 0), completion(p["attention_mask"][:, w:])], 1))
    merged["input_ids"], merged["attention_mask"] = torch.cat(ids), torch.cat(masks)
    for key in pieces[0]:
        if key in merged or key in ("input_ids", "attention_mask"):
            continue
        values = [p[key] for p in pieces]
        if isinstance(values[0], torch.Tensor):
            merged[key] = torch.cat([completion(v) if v.dim() == 2 else v for v in values])
        elif isinstance(values[0], dict):  # reward parts: means weighted by each piece's rows
            rows = [len(p["scores"]) for p in pieces]
            merged[key] = {k: sum(v[k] * n for v, n in zip(values, rows, strict=True)) / sum(rows)
                           for k in values[0]}
    return merged
