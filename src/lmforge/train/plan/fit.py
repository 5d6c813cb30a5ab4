"""From one traced step to each device of a parallel run: what ZeRO/FSDP shard, what a 4-bit base saves, what tensor
parallelism splits; the estimated step time from the step's FLOPs at a stated MFU; the verdict against the device.

Traced (exact for the recipe, as MemTracker counts it): the activations and temporaries of the step, and every kind
on one process. Computed here (formulas, said so in the report): the shards of ZeRO-1/2/3 and FSDP (the ZeRO paper's
2 + 2 + 12 bytes per parameter with bf16 weights), a bitsandbytes 4/8-bit base (bitsandbytes cannot run over fake
tensors), DDP's gradient buckets, and the parameters a tensor-parallel rank holds."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from lmforge.config.schema import RunConfig
from lmforge.config.validate import zero_optimization
from lmforge.model.memory import StepMemory
from lmforge.train.plan.devices import Devices
from lmforge.train.plan.rl_trace import RL_STAGES
from lmforge.train.plan.trace import PREFERENCE_STAGES, TracedStep

# bytes per parameter of a quantized base: bitsandbytes NF4 with double quantization (4 bits + 8-bit absmax per 64 +
# fp32 per 256 blocks), LLM.int8 (1 byte + an fp32 scale per row); torchao int4 in groups of 128 (4 bits + a bf16
# scale and zero point per group of 128), int8 weight-only (1 byte + a scale per row); HQQ's packed weights (3 bits
# are stored 10 to a 32-bit word), to which `quantized_bytes` adds its scale and zero point per group of 64
QUANTIZED_BYTES = {("bitsandbytes", 4): 4.127 / 8, ("bitsandbytes", 8): 1.0, ("torchao", 4): 0.5 + 4 / 128,
                   ("torchao", 8): 1.0, ("hqq", 1): 1 / 8, ("hqq", 2): 2 / 8, ("hqq", 3): 3.2 / 8, ("hqq", 4): 0.5,
                   ("hqq", 8): 1.0}
DEFAULT_MFU = 0.4


@dataclass
class DevicePlan:
    memory: StepMemory  # per device at the peak
    usable: int
    engine: str  # how the weights are spread, in words
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.usable


def zero_stage(cfg: RunConfig) -> tuple[int, bool, bool]:
    """(ZeRO stage, optimizer offloaded, parameters offloaded) of the run's DeepSpeed config or FSDP setting; stage
    0 for plain DDP."""
    t = cfg.training
    if t.deepspeed:
        zero = zero_optimization(t.deepspeed)
        offload = lambda key: (zero.get(key) or {}).get("device", "none") not in ("none", None)  # noqa: E731
        return int(zero.get("stage", 0) or 0), offload("offload_optimizer"), offload("offload_param")
    if t.fsdp:
        options = " ".join(t.fsdp) if isinstance(t.fsdp, list) else str(t.fsdp)
        return (2 if "shard_grad_op" in options else 3), "offload" in options, "offload" in options
    if cfg.parallelism.data_shard_size > 1 or cfg.parallelism.context_parallel_size > 1:
        # FSDP2 (context parallelism runs inside it: accelerate joins the shard and context dimensions)
        return 3, False, False
    return 0, False, False


def device_plan(cfg: RunConfig, step: TracedStep, devices: Devices) -> DevicePlan:
    """The peak on each device of `devices` running `cfg` (one traced step, spread by the run's engine)."""
    memory = replace(step.memory)
    notes: list[str] = []
    stage, offload_optimizer, offload_parameters = zero_stage(cfg)
    count = devices.count
    shards = cfg.parallelism.data_shard_size if cfg.parallelism.data_shard_size > 1 else count
    tensor = cfg.parallelism.tensor_parallel_size
    bits = cfg.model.quantization_bit
    if bits:
        method = cfg.model.quantization_method
        _quantized_base(memory, step, bits, method)
        notes.append(f"{bits}-bit base: its frozen linear weights at {quantized_bytes(step, bits, method):.2f} bytes "
                     f"per weight ({method}), the other frozen weights "
                     + ("in float32 (peft's k-bit preparation)" if method == "bitsandbytes" else "as loaded")
                     + " - computed")
    if stage:
        _zero(memory, step, cfg, stage, shards, offload_optimizer, offload_parameters)
        engine = (f"ZeRO-{stage}" if cfg.training.deepspeed else "FSDP") + f" over {shards} devices"
        if offload_optimizer or offload_parameters:
            engine += " (offloaded to CPU: " + ", ".join(
                n for n, on in (("optimizer", offload_optimizer), ("parameters", offload_parameters)) if on) + ")"
        notes.append("parameters, gradients and optimizer state: the ZeRO paper's bytes per parameter, sharded - "
                     "computed; activations and temporaries traced")
    elif count > 1 and tensor == 1 and cfg.finetuning.stage in RL_STAGES:
        engine = f"{count} processes, each holding the whole model (gradients averaged in place)"
    elif count > 1 and tensor == 1:
        engine = f"DDP over {count} devices (every device holds the whole model)"
        memory.gradients += step.memory.gradients or _gradient_bytes(step)
        notes.append("DDP's gradient buckets: one more copy of the gradients - computed")
    else:
        engine = "one device" if count == 1 else f"{count} devices"
    r = cfg.rl
    if cfg.finetuning.stage in RL_STAGES and r.rollout_backend == "vllm" and r.vllm_mode == "colocate":
        memory.other += int(r.vllm_gpu_memory_utilization * devices.memory)
        notes.append(f"vLLM colocated: {r.vllm_gpu_memory_utilization:.0%} of the device's memory for its weights "
                     "and KV cache (other) - its setting, not traced")
    _split_sequences_and_experts(memory, step, cfg, notes)
    if tensor > 1:
        for kind in ("parameters", "gradients", "optimizer_state"):
            setattr(memory, kind, getattr(memory, kind) // tensor)
        engine = f"tensor parallel {tensor}" + ("" if engine == "one device" else f", {engine}")
        notes.append(f"tensor parallel: 1/{tensor} of the weights, gradients and optimizer state per device; "
                     "activations as on one device (an upper bound)")
    return DevicePlan(memory, devices.usable, engine, notes)


def _split_sequences_and_experts(memory: StepMemory, step: TracedStep, cfg: RunConfig, notes: list[str]) -> None:
    """Context and sequence parallelism: each device of a group holds 1/N of every row's tokens, so 1/N of what the
    trace of whole rows held in activations and temporaries. Expert parallelism: each device holds 1/N of the
    experts whole, as the shards already counted give it."""
    p = cfg.parallelism
    split = p.context_parallel_size * p.sequence_parallel_size
    if split > 1:
        memory.activations //= split
        memory.temporaries //= split
        notes.append(f"context/sequence parallel {split}: 1/{split} of each row's tokens per device, so 1/{split} of "
                     "the traced activations and temporaries - computed (the keys and values attention passes "
                     "between devices are not counted)")
    if p.expert_parallel_size > 1 and step.expert_parameters:
        notes.append(f"expert parallel {p.expert_parallel_size}: 1/{p.expert_parallel_size} of the experts whole on "
                     "each device, which the sharded weights above already count")


def _gradient_bytes(step: TracedStep) -> int:
    """The gradients' bytes when the traced peak held none (it fell in the forward pass): float32, as the trained
    weights (master copies, adapters) are."""
    return step.trainable * 4


def quantized_bytes(step: TracedStep, bits: int, method: str) -> float:
    """Bytes per frozen linear weight of the quantized base (HQQ: with a scale and a zero point per group of 64 in
    the dtype the weights were loaded in)."""
    from lmforge.model.hqq_base import HQQ_GROUP_SIZE

    per_weight = QUANTIZED_BYTES[method, bits]
    if method == "hqq":
        per_weight += 2 * step.frozen_linear_bytes / max(step.frozen_linear_parameters, 1) / HQQ_GROUP_SIZE
    return per_weight


def _quantized_base(memory: StepMemory, step: TracedStep, bits: int, method: str) -> None:
    """The traced base as the quantizer stores it: its linear weights packed; the other frozen weights in float32
    after peft's k-bit preparation (bitsandbytes; from bf16), as loaded (torchao)."""
    trainable = step.trainable * 4  # the adapters, float32
    other_frozen = max(memory.parameters - step.frozen_linear_bytes - trainable, 0)
    memory.parameters = (int(step.frozen_linear_parameters * quantized_bytes(step, bits, method))
                         + (2 if method == "bitsandbytes" else 1) * other_frozen + trainable)


def _zero(memory: StepMemory, step: TracedStep, cfg: RunConfig, stage: int, shards: int, offload_optimizer: bool,
          offload_parameters: bool) -> None:
    """ZeRO-1/2/3 (FSDP's full shard is stage 3, shard_grad_op stage 2) over `shards` devices, with bf16 (or fp32)
    weights and an fp32 master copy inside the optimizer state."""
    half = bool(cfg.training.bf16 or cfg.training.fp16)
    weight_bytes = 2 if half else 4
    trainable = step.trainable
    # full: every weight in the training dtype (the fp32 masters live in the optimizer state); adapters or a frozen
    # part: the weights as the trace held them
    full = cfg.finetuning.finetuning_type == "full"
    parameters = step.parameters * weight_bytes if full else memory.parameters
    gradients = trainable * weight_bytes
    # (fp32 master +) Adam's two moments, or the traced state of lmforge's memory-light `optimizer`
    moments = step.memory.optimizer_state if cfg.finetuning.optimizer else trainable * 8
    optimizer = moments + (trainable * 4 if half else 0)
    if stage >= 3:
        parameters = parameters // shards + 2 * step.largest_layer_bytes  # this layer and the next, gathered
    if stage >= 2:
        gradients //= shards
    optimizer //= shards
    memory.parameters = 0 if offload_parameters else parameters
    memory.gradients = gradients
    memory.optimizer_state = 0 if offload_optimizer else optimizer


@dataclass
class Speed:
    flops_per_token: float
    tokens_per_step: int  # over all devices
    step_seconds: float | None
    tokens_per_second: float | None  # over all devices
    mfu: float


def speed(cfg: RunConfig, step: TracedStep, devices: Devices, mfu: float = DEFAULT_MFU) -> Speed:
    """Training FLOPs per token (6N for the weights a token runs through (a mixture of experts: its top-k experts
    only), 4N without weight gradients (LoRA/frozen) or +2N recomputed with gradient checkpointing; attention's
    6·layers·length·width; a reference model's forward 2N) and the step time they take at `mfu` of the devices'
    peak."""
    from lmforge.config.architecture import num_experts

    text = step.config.get_text_config() if hasattr(step.config, "get_text_config") else step.config
    embeddings = text.vocab_size * text.hidden_size
    # the input embedding is a lookup; a tied output layer is the same weights, used as a matmul
    matmul = step.parameters - (0 if getattr(text, "tie_word_embeddings", False) else embeddings)
    if step.expert_parameters and (experts := num_experts(step.config)):
        # a token runs top-k of a layer's experts: the others' weights cost it no FLOPs
        active = min(getattr(text, "num_experts_per_tok", None) or 1, experts) / experts
        matmul -= int(step.expert_parameters * (1 - active))
    full = cfg.finetuning.finetuning_type == "full"
    per_token = (6 if full else 4) * matmul
    if cfg.training.gradient_checkpointing:
        per_token += 2 * matmul
    width = getattr(text, "num_attention_heads", 0) * (getattr(text, "head_dim", None)
                                                       or text.hidden_size // max(text.num_attention_heads, 1))
    per_token += 6 * text.num_hidden_layers * step.tokens * width
    if cfg.finetuning.stage in PREFERENCE_STAGES + ("kd",):
        # the reference's forward (and the KL rows'), or the teacher's (counted at the student's size)
        per_token += 2 * matmul * (3 if cfg.finetuning.stage == "kto" else 1)
    p = cfg.parallelism  # the devices of a tensor/context/sequence group share one batch
    data_parallel = max(devices.count // (p.tensor_parallel_size * p.context_parallel_size
                                          * p.sequence_parallel_size), 1)
    tokens = step.rows * step.tokens * cfg.training.gradient_accumulation_steps * data_parallel
    if cfg.finetuning.stage in RL_STAGES:
        # each completion trained `ppo_epochs` times after one scoring forward (and the reference's); sampling is
        # bound by memory bandwidth, not FLOPs: not in the estimate (the run logs rollout_tokens_per_second)
        from lmforge.train.rl.algorithms import algorithm_of

        scoring = 2 * matmul * (2 if algorithm_of(cfg).needs_reference else 1)
        per_token = per_token * cfg.rl.ppo_epochs + scoring
        tokens = step.rollout_rows * step.tokens * data_parallel
    if not devices.tflops:
        return Speed(per_token, tokens, None, None, mfu)
    seconds = per_token * tokens / (devices.count * devices.tflops * 1e12 * mfu)
    return Speed(per_token, tokens, seconds, tokens / seconds, mfu)
