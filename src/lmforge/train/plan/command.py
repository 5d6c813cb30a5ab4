"""`lmforge plan CONFIG [--gpus 8xH100-80GB | --gpu-memory 24GiB --gpus 2] [--json]`: trace the run's step over fake
tensors, spread it over the devices, say whether it fits and how fast it should go, and when it does not fit, the
cheapest change that does (planned too, not guessed)."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from lmforge.config.schema import RunConfig
from lmforge.train.plan.devices import GIB, Devices
from lmforge.train.plan.fit import DEFAULT_MFU, DevicePlan, Speed, device_plan, speed, zero_stage
from lmforge.train.plan.rl_trace import RL_STAGES, trace_online_rl
from lmforge.train.plan.trace import LANGUAGE_MODEL_STAGES, TracedStep, trace_step

logger = logging.getLogger(__name__)

# a ZeRO config for a suggested stage, as the examples under examples/deepspeed hold it
_ZERO = {stage: {"zero_optimization": {"stage": stage}, "bf16": {"enabled": "auto"}} for stage in (2, 3)}


@dataclass
class Plan:
    cfg: RunConfig
    devices: Devices
    step: TracedStep
    device: DevicePlan
    speed: Speed

    @property
    def fits(self) -> bool:
        return self.device.fits


def make_plan(cfg: RunConfig, devices: Devices, mfu: float = DEFAULT_MFU) -> Plan:
    step = _traced(cfg, devices)
    return Plan(cfg, devices, step, device_plan(cfg, step, devices), speed(cfg, step, devices, mfu))


_TRACES: dict[str, TracedStep] = {}


def _traced(cfg: RunConfig, devices: Devices) -> TracedStep:
    """The traced step, once per recipe: a change of devices, ZeRO stage or base quantization is computed from the
    same trace (the engine only decides whether float32 masters are made). ppo/grpo: the devices share the step's
    rollout, so their number is part of the recipe."""
    t = cfg.training
    online = cfg.finetuning.stage in RL_STAGES
    processes = max(devices.count // cfg.parallelism.tensor_parallel_size, 1) if online else 1
    key = json.dumps([cfg.model.model_name_or_path, cfg.model.model_type, sorted(cfg.model.config_overrides.items()),
                      str(cfg.finetuning), cfg.data.cutoff_len, t.per_device_train_batch_size,
                      min(t.gradient_accumulation_steps, 2), t.gradient_checkpointing, t.bf16, t.fp16,
                      bool(t.deepspeed or t.fsdp), t.optim, t.max_grad_norm,
                      *([str(cfg.rl), cfg.generation.max_new_tokens, processes] if online else [])], default=str)
    if key not in _TRACES:
        _TRACES[key] = trace_online_rl(cfg, processes) if online else trace_step(cfg)
    return _TRACES[key]


def _valid(cfg: RunConfig) -> bool:
    """A suggested config passes the checks a run makes (QLoRA does not combine with ZeRO-3 in lmforge, ...)."""
    from lmforge.config.validate import validate
    from lmforge.device import planning_for_gpus
    from lmforge.errors import ConfigError

    try:
        with planning_for_gpus():
            validate(cfg)
    except ConfigError:
        return False
    return True


# ---- the changes tried when a run does not fit, cheapest first ------------------------------------------------------

def _set(cfg: RunConfig, group: str, **values: Any) -> RunConfig:
    changed = copy.deepcopy(cfg)
    for key, value in values.items():
        setattr(getattr(changed, group), key, value)
    return changed


def _checkpointing(cfg: RunConfig, devices: Devices):
    return None if cfg.training.gradient_checkpointing else (_set(cfg, "training", gradient_checkpointing=True),
                                                             devices)


def _chunked(cfg: RunConfig, devices: Devices):
    if cfg.finetuning.chunked_loss or cfg.finetuning.stage not in LANGUAGE_MODEL_STAGES:
        return None
    return _set(cfg, "finetuning", chunked_loss=True), devices


def _zero_stage(stage: int):
    def change(cfg: RunConfig, devices: Devices):
        if devices.count < 2 or zero_stage(cfg)[0] >= stage or cfg.parallelism.tensor_parallel_size > 1:
            return None
        if cfg.finetuning.stage in RL_STAGES:  # their own loop shards with FSDP2 (fully: ZeRO-3's layout)
            return (_sharded(cfg, devices.count), devices) if stage == 3 else None
        return _set(cfg, "training", deepspeed=_ZERO[stage], fsdp=""), devices
    return change


def _sharded(cfg: RunConfig, count: int) -> RunConfig:
    """`cfg` with its weights, gradients and optimizer state sharded over `count` devices: ZeRO-3, or FSDP2
    (`data_shard_size`) for ppo/grpo."""
    if cfg.finetuning.stage in RL_STAGES:
        return _set(cfg, "parallelism", data_shard_size=count)
    return _set(cfg, "training", deepspeed=_ZERO[3], fsdp="") if zero_stage(cfg)[0] < 3 else cfg


def _smaller_batch(cfg: RunConfig, devices: Devices):
    batch = cfg.training.per_device_train_batch_size
    if batch < 2:
        return None
    return _set(cfg, "training", per_device_train_batch_size=batch // 2,
                gradient_accumulation_steps=cfg.training.gradient_accumulation_steps * 2), devices


def _lora(cfg: RunConfig, devices: Devices):
    if cfg.finetuning.finetuning_type == "lora":
        return None
    return _set(cfg, "finetuning", finetuning_type="lora", lora_target="all"), devices


def _qlora(cfg: RunConfig, devices: Devices):
    if cfg.finetuning.finetuning_type != "lora" or cfg.model.quantization_bit:
        return None
    return _set(cfg, "model", quantization_bit=4), devices


def _more_gpus(cfg: RunConfig, devices: Devices):
    if devices.count >= 64:
        return None
    more = replace(devices, count=devices.count * 2)
    changed = _sharded(cfg, more.count)
    if changed.launch.nproc_per_node == devices.count:  # a process per GPU
        changed = _set(changed, "launch", nproc_per_node=more.count)
    return changed, more


# (what the report calls it, the change: a config and devices, or None where it does not apply)
CHANGES: list[tuple[str, Callable[[RunConfig, Devices], tuple[RunConfig, Devices] | None]]] = [
    ("chunked_loss: true", _chunked),
    ("gradient_checkpointing: true", _checkpointing),
    ("deepspeed: examples/deepspeed/ds_z2_config.json (ZeRO-2)", _zero_stage(2)),
    ("deepspeed: examples/deepspeed/ds_z3_config.json (ZeRO-3; ppo/grpo: data_shard_size over the GPUs)",
     _zero_stage(3)),
    ("half the per-device batch, twice the accumulation (the same global batch)", _smaller_batch),
    ("finetuning_type: lora (lora_target: all)", _lora),
    ("quantization_bit: 4 (QLoRA)", _qlora),
    ("twice the GPUs, sharded (ZeRO-3; ppo/grpo: data_shard_size)", _more_gpus),
]


def cheapest_fit(plan: Plan, mfu: float = DEFAULT_MFU) -> tuple[list[str], Plan] | None:
    """The first single change (cheapest first) that makes `plan` fit, else the changes taken in that order until
    it fits; each planned. None when nothing fits."""
    for name, change in CHANGES:
        changed = change(plan.cfg, plan.devices)
        if changed is not None and _valid(changed[0]):
            candidate = make_plan(*changed, mfu)
            if candidate.fits:
                return [name], candidate
    taken: list[str] = []
    current = plan
    for _ in range(12):  # each change at most a few times (the batch halves, the GPUs double)
        progressed = False
        for name, change in CHANGES:
            changed = change(current.cfg, current.devices)
            if changed is None or not _valid(changed[0]):
                continue
            current, progressed = make_plan(*changed, mfu), True
            taken.append(name)
            if current.fits:
                return taken, current
            break
        if not progressed:
            return None
    return None


# ---- the report ---------------------------------------------------------------------------------------------------

KIND_NAMES = (("parameters", "parameters"), ("gradients", "gradients"), ("optimizer_state", "optimizer state"),
              ("activations", "activations"), ("temporaries", "temporaries"), ("buffers", "buffers"),
              ("other", "other"))


def _gib(value: int) -> str:
    return f"{value / GIB:,.2f} GiB"


def plan_dict(plan: Plan) -> dict[str, Any]:
    s, d, v = plan.step, plan.device, plan.speed
    return {"stage": plan.cfg.finetuning.stage, "model": plan.cfg.model.model_name_or_path or
            plan.cfg.model.model_type, "model_type": s.config.model_type, "parameters": s.parameters,
            "trainable": s.trainable, "devices": {"name": plan.devices.name, "count": plan.devices.count,
                                                  "memory_bytes": plan.devices.memory, "tflops": plan.devices.tflops},
            "step": {"rows": s.rows, "tokens_per_row": s.tokens,
                     "micro_batches": plan.cfg.training.gradient_accumulation_steps,
                     **({"rollout_rows": s.rollout_rows} if s.rollout_rows else {})},
            "engine": d.engine, "per_device_bytes": d.memory.as_dict(), "usable_bytes": d.usable, "fits": d.fits,
            "speed": {"flops_per_token": v.flops_per_token, "tokens_per_step": v.tokens_per_step,
                      "step_seconds": v.step_seconds, "tokens_per_second": v.tokens_per_second, "mfu": v.mfu},
            "notes": s.notes + d.notes}


def render(plan: Plan, suggestion: tuple[list[str], Plan] | None) -> str:
    s, d = plan.step, plan.device
    cfg = plan.cfg
    kind = cfg.finetuning.finetuning_type + (f" + {cfg.model.quantization_bit}-bit {cfg.model.quantization_method} "
                                             "base" if cfg.model.quantization_bit else "")
    lines = [f"Plan: {cfg.finetuning.stage} of {plan_dict(plan)['model']} ({s.config.model_type}, "
             f"{_count(s.parameters)} parameters; {kind}: {s.trainable:,} trained) on {plan.devices.describe()}",
             _step_line(plan), "", "Per device, at the peak:"]
    for key, name in KIND_NAMES:
        value = getattr(d.memory, key)
        if value >= 2**20 or key in ("parameters", "gradients", "optimizer_state", "activations"):
            lines.append(f"  {name:<17}{_gib(value):>14}")
    spare = d.usable - d.memory.total
    lines.append(f"  {'total':<17}{_gib(d.memory.total):>14}  of {_gib(d.usable)} usable ({_gib(plan.devices.memory)} "
                 f"less {_gib(plan.devices.reserved)} for the CUDA context)")
    lines += ["", f"Fits: {'yes' if d.fits else 'no'} ({_gib(abs(spare))} {'spare' if d.fits else 'over'})"
              + ("; under 10 % spare: allocator fragmentation may take it" if d.fits and spare < 0.1 * d.usable
                 else "")]
    lines.append(_speed_line(plan))
    if not d.fits:
        if suggestion is None:
            lines.append("No change lmforge tries (gradient checkpointing, ZeRO, a smaller batch, LoRA, QLoRA, more "
                         "GPUs) makes it fit.")
        else:
            changes, fitted = suggestion
            lines.append(f"Cheapest change that fits: {' + '.join(changes)} -> {_gib(fitted.device.memory.total)} per "
                         f"device on {fitted.devices.describe()} "
                         f"({_gib(fitted.device.usable - fitted.device.memory.total)} spare); "
                         + _speed_line(fitted).removeprefix("Speed: "))
    notes = s.notes + d.notes
    if notes:
        lines += ["", "Notes:", *(f"  - {note}" for note in notes)]
    return "\n".join(lines)


def _step_line(plan: Plan) -> str:
    s, cfg = plan.step, plan.cfg
    accumulated = cfg.training.gradient_accumulation_steps
    if s.rollout_rows:
        what = (f"{s.rollout_rows} completions per device sampled with the KV cache and scored, then trained in "
                f"mini-batches of {s.rows} x {s.tokens:,} tokens (prompt and completion at their longest), "
                f"{accumulated} per optimizer step")
    else:
        what = (f"{s.rows} rows x {s.tokens:,} tokens per micro-batch (every token trained: the longest batch the "
                f"run can meet), {accumulated} micro-batch(es) per step")
    return f"Step traced over fake tensors: {what}; {_precision(cfg)}; {plan.device.engine}."


def _count(parameters: int) -> str:
    return f"{parameters / 1e9:,.2f}B" if parameters >= 1e9 else f"{parameters / 1e6:,.1f}M"


def _precision(cfg: RunConfig) -> str:
    t = cfg.training
    if cfg.finetuning.pure_bf16:
        return "pure bf16"
    if cfg.finetuning.fp8:  # the float8 layers are traced; float8 tensor cores' peak is not assumed
        return "bf16 mixed precision, the decoder's matmuls in float8 (fp8; the speed below is at the bf16 peak)"
    return "bf16 mixed precision" if t.bf16 else "fp16 mixed precision" if t.fp16 else "float32 (no bf16/fp16)"


def _speed_line(plan: Plan) -> str:
    v = plan.speed
    if v.tokens_per_second is None:
        return (f"Speed: {v.flops_per_token / 1e9:,.1f} GFLOP per token; give the GPU's peak (--tflops) for a time "
                "estimate")
    return (f"Speed: ~{v.tokens_per_second:,.0f} tokens/s over {plan.devices.count} device(s), {v.step_seconds:,.2f} s "
            f"per step of {v.tokens_per_step:,} tokens ({v.flops_per_token / 1e9:,.1f} GFLOP per token at "
            f"{v.mfu:.0%} MFU of {plan.devices.tflops:,.0f} TFLOP/s)")


def run_plan(cfg: RunConfig, devices: Devices, mfu: float = DEFAULT_MFU, as_json: bool = False) -> int:
    plan = make_plan(cfg, devices, mfu)
    suggestion = None if plan.fits else cheapest_fit(plan, mfu)
    if as_json:
        out = plan_dict(plan)
        out["suggestion"] = None if suggestion is None else {
            "changes": suggestion[0], **{k: v for k, v in plan_dict(suggestion[1]).items()
                                         if k in ("devices", "engine", "per_device_bytes", "fits", "speed")}}
        print(json.dumps(out, indent=1))
    else:
        print(render(plan, suggestion))
    return 0
