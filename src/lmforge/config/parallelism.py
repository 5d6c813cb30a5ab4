"""How one model is split over the processes beyond data parallelism: tensor, context, sequence and expert parallelism
and FSDP2 sharding (accelerate's `ParallelismConfig` and transformers' tensor-parallel plans do the work)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from lmforge.config.fields import option


@dataclass
class ParallelismArguments:
    tensor_parallel_size: int = option(
        1, "Processes that split every layer's weights (transformers' tensor-parallel plan of the model: Llama, "
        "Qwen2/3, Mistral, Gemma, ...); each holds 1/N of the attention heads and MLP columns and they exchange "
        "activations at every layer, so keep it within one machine (NVLink). Must divide the number of attention "
        "and key-value heads.", stages=("pt", "sft"))
    context_parallel_size: int = option(
        1, "Processes that split every sequence along its length with torch's context parallelism (ring attention "
        "over SDPA; CUDA GPUs): each holds 1/N of each row's tokens, so the activations of a long row are spread. "
        "`cutoff_len` must be a multiple of 2N.", stages=("pt", "sft"))
    sequence_parallel_size: int = option(
        1, "Processes that split every sequence along its length with DeepSpeed Ulysses (all-to-all attention heads; "
        "needs `deepspeed` and CUDA GPUs; works with packed rows and flash-attention). Must divide the number of "
        "attention heads and `cutoff_len`.", stages=("pt", "sft"))
    sequence_parallel_backend: Literal["deepspeed"] = option(
        "deepspeed", "The engine of `sequence_parallel_size`: `deepspeed` (Ulysses / ALST, through accelerate).",
        stages=("pt", "sft"))
    data_shard_size: int = option(
        1, "Processes that shard parameters, gradients and optimizer state with FSDP2 (ZeRO-3 style) inside each "
        "data-parallel replica; with `tensor_parallel_size` this is 2D parallelism. The processes left over "
        "(processes / (tensor x context x sequence x shard)) are plain data-parallel replicas. With the online stages "
        "the policy (and a reference copy) are sharded this way.",
        stages=("pt", "sft", "ppo", "grpo", "online_dpo"))
    expert_parallel_size: int = option(
        1, "Processes that split a mixture-of-experts model's experts (transformers' expert-parallel plan of the "
        "model: Qwen2/3-MoE, DeepSeek-V3, Mixtral, GPT-OSS, OLMoE, ...): each holds 1/N of every layer's experts and "
        "the routed tokens travel to them by all-to-all. It adds no processes: the experts are split over the "
        "ranks that already split the dense layers, so it must be a multiple of `tensor_parallel_size` and divide "
        "`tensor_parallel_size x data_shard_size` (e.g. `data_shard_size: 8, expert_parallel_size: 8`: dense "
        "layers FSDP2-sharded, experts whole on one rank each). Must divide the number of experts.",
        stages=("pt", "sft"))


@dataclass(frozen=True)
class ParallelLayout:
    """The sizes of every dimension; their product is the number of processes."""

    tensor: int = 1
    context: int = 1
    sequence: int = 1
    shard: int = 1
    replicate: int = 1
    expert: int = 1

    @property
    def model_parallel(self) -> bool:
        return self.tensor * self.context * self.sequence * self.shard > 1

    @property
    def splits_at_load(self) -> bool:
        """Tensor parallelism and FSDP2 shards are applied by transformers as the weights load; with context or
        sequence parallelism the shards are accelerate's (FSDP2 around torch's context parallelism, or ZeRO)."""
        return self.tensor > 1 or (self.shard > 1 and self.context == 1 and self.sequence == 1)

    @property
    def data_parallel(self) -> int:
        """How many different batches one step sees: the ranks inside a tensor/context/sequence group share one."""
        return self.shard * self.replicate

    def describe(self) -> str:
        parts = [f"{name} {size}" for name, size in (("tensor", self.tensor), ("context", self.context),
                                                      ("sequence", self.sequence), ("FSDP2 shard", self.shard),
                                                      ("data replicas", self.replicate)) if size > 1]
        text = " x ".join(parts) or "one process"
        return f"{text}; experts split over {self.expert}" if self.expert > 1 else text


def parallel_layout(args: ParallelismArguments, processes: int) -> ParallelLayout:
    """The layout for `processes` processes; the replicas are what the other sizes leave. Raises ValueError with
    the keys to change when the sizes do not fit."""
    sizes = {"tensor_parallel_size": args.tensor_parallel_size, "context_parallel_size": args.context_parallel_size,
             "sequence_parallel_size": args.sequence_parallel_size, "data_shard_size": args.data_shard_size}
    for key, size in sizes.items():
        if size < 1:
            raise ValueError(f"'{key}' must be at least 1, got {size}.")
    model = 1
    for size in sizes.values():
        model *= size
    if processes % model:
        named = " x ".join(f"{k} {v}" for k, v in sizes.items() if v > 1)
        raise ValueError(f"{named} = {model} processes per model copy, which does not divide the {processes} "
                         f"processes of this run: the number of processes must be a multiple of the product (set "
                         "`nproc_per_node`/`nnodes`, or change the sizes).")
    expert = args.expert_parallel_size
    if expert < 1:
        raise ValueError(f"'expert_parallel_size' must be at least 1, got {expert}.")
    dense_split = args.tensor_parallel_size * args.data_shard_size
    if expert > 1 and (expert % args.tensor_parallel_size or dense_split % expert):
        raise ValueError(
            f"'expert_parallel_size: {expert}' splits the experts over the ranks that split the dense layers "
            f"(tensor_parallel_size {args.tensor_parallel_size} x data_shard_size {args.data_shard_size} = "
            f"{dense_split}): it must be a multiple of 'tensor_parallel_size' and divide that product (e.g. "
            f"'data_shard_size: {expert // math.gcd(expert, args.tensor_parallel_size)}').")
    return ParallelLayout(args.tensor_parallel_size, args.context_parallel_size, args.sequence_parallel_size,
                          args.data_shard_size, processes // model, expert)
