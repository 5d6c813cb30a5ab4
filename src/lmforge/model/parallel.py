"""Model parallelism through the engines that exist: transformers splits a model as it loads (its tensor- and
expert-parallel plans, FSDP2 sharding: `DistributedConfig`), accelerate's `ParallelismConfig` gives the Trainer its
device mesh (and runs torch's context parallelism or DeepSpeed Ulysses)."""

from __future__ import annotations

import logging
from typing import Any

from lmforge.config.launch import process_count
from lmforge.config.parallelism import ParallelLayout, parallel_layout
from lmforge.config.schema import RunConfig

logger = logging.getLogger(__name__)


def run_layout(cfg: RunConfig) -> ParallelLayout:
    """This run's layout over the processes it runs on."""
    return parallel_layout(cfg.parallelism, process_count(cfg.launch))


def load_kwargs(layout: ParallelLayout) -> dict[str, Any]:
    """`from_pretrained` arguments that split the model over the processes as it loads (none without a split)."""
    if not layout.splits_at_load:
        return {}
    from transformers.distributed import DistributedConfig

    allow_cpu_tensor_parallel()
    experts = {"ep_size": layout.expert} if layout.expert > 1 else {}  # (a key transformers 5.x added)
    return {"distributed_config": DistributedConfig(tp_size=layout.tensor, fsdp_size=layout.shard,
                                                    dp_replicate_size=layout.replicate if layout.shard > 1 else 1,
                                                    **experts)}


def trainer_parallelism(cfg: RunConfig, layout: ParallelLayout) -> Any:
    """accelerate's ParallelismConfig for context/sequence parallelism (the Trainer builds its own for a model
    split at load time, from the model's sizes); None when neither is used."""
    if layout.context == 1 and layout.sequence == 1:
        return None
    from accelerate import ParallelismConfig

    return ParallelismConfig(dp_replicate_size=layout.replicate, dp_shard_size=layout.shard, cp_size=layout.context,
                             sp_size=layout.sequence, sp_backend=cfg.parallelism.sequence_parallel_backend)


def allow_cpu_tensor_parallel() -> None:
    """Let accelerate accept a tensor-parallel model on CPU processes (gloo).

    Why: accelerate's ParallelismConfig check lists the accelerator types a device mesh may run on and leaves out
    MULTI_CPU, although DTensor tensor parallelism runs over gloo and gives the single-process losses (tested). Its
    `multi_device` property is widened to CPU process groups; nothing else about accelerate changes. On GPUs this is
    a no-op."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    current = Accelerator.multi_device
    if getattr(current.fget, "lmforge_cpu_groups", False):
        return

    def multi_device(self: Any) -> bool:
        return current.fget(self) or (self.use_distributed and self.distributed_type == DistributedType.MULTI_CPU)

    multi_device.lmforge_cpu_groups = True  # type: ignore[attr-defined]
    Accelerator.multi_device = property(multi_device)  # type: ignore[method-assign]


def describe(cfg: RunConfig, layout: ParallelLayout) -> str:
    """What one optimizer step really takes: the layout, sequences and tokens per step."""
    t = cfg.training
    if cfg.finetuning.stage in ("ppo", "grpo", "online_dpo"):
        group = {"grpo": cfg.rl.num_generations, "online_dpo": 2}.get(cfg.finetuning.stage, 1)
        return (f"Parallelism: {layout.describe()}; each step samples {cfg.rl.rollout_batch_size:,} prompts x "
                f"{group} and updates in mini-batches of {t.per_device_train_batch_size * layout.data_parallel:,} "
                "completions")
    sequences = t.per_device_train_batch_size * t.gradient_accumulation_steps * layout.data_parallel
    split = layout.context * layout.sequence
    text = (f"Parallelism: {layout.describe()}; global batch {sequences:,} sequences of up to "
            f"{cfg.data.cutoff_len:,} tokens = {sequences * cfg.data.cutoff_len:,} tokens per step")
    if split > 1:
        text += f" ({cfg.data.cutoff_len // split:,} tokens of each row per process)"
    return text
