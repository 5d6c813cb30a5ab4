"""How the online RL loop turns losses into weight updates as the Trainer stages do: transformers' optimizer factory
(`optim`, `optim_args`, weight decay off for biases and norms), its scheduler (`lr_scheduler_kwargs`), bf16/fp16
autocast (fp16 with a loss scaler), `gradient_accumulation_steps`, clipping, and the non-finite guard.

Why not the Trainer: PPO/GRPO steps are rollouts, not batches of a dataset; the loop stays ours, the parts are the
library's (`Trainer.get_optimizer_cls_and_kwargs`, `get_scheduler`, `torch.autocast`, `GradScaler`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from transformers import Trainer, TrainingArguments, get_scheduler

from lmforge.train.rl.distributed import is_sharded
from lmforge.train.runtime.guard import NonfiniteGuard


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """`clip_grad_norm_`, also over a mix of FSDP2-sharded (DTensor) and plain gradients, which torch's one norm
    cannot stack: each kind's norm is taken apart (the sharded one reduced over its mesh) and combined."""
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g for g in grads if is_sharded(g)]
    if not sharded:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    plain = [g for g in grads if not is_sharded(g)]
    norms = [torch.nn.utils.get_total_norm(sharded).full_tensor()]
    if plain:
        norms.append(torch.nn.utils.get_total_norm(plain).to(norms[0].device))
    total = torch.linalg.vector_norm(torch.stack(norms))
    coefficient = min(1.0, max_norm / (float(total) + 1e-6))
    if coefficient < 1.0:
        for g in grads:
            g.mul_(coefficient)
    return total


class Optimization:
    def __init__(self, args: TrainingArguments, model: torch.nn.Module, extra: torch.nn.Module | None,
                 guard: NonfiniteGuard | None, device: torch.device):
        self.args, self.device = args, device
        decay = set(Trainer.get_decay_parameter_names(None, model))
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [{"params": [p for n, p in named if n in decay], "weight_decay": args.weight_decay},
                  {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
        if extra is not None:  # PPO's value head learns with the policy (a group of its own: with a sharded
            # policy its plain tensors cannot share a fused optimizer kernel with the policy's DTensors)
            groups.append({"params": [p for p in extra.parameters() if p.requires_grad],
                           "weight_decay": args.weight_decay})
        self.params = [p for group in groups for p in group["params"]]
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
        self.optimizer = optimizer_cls([g for g in groups if g["params"]], **optimizer_kwargs)
        self.scheduler = get_scheduler(args.lr_scheduler_type, self.optimizer,
                                       num_warmup_steps=args.get_warmup_steps(args.max_steps),
                                       num_training_steps=args.max_steps,
                                       scheduler_specific_kwargs=args.lr_scheduler_kwargs or {})
        self.dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
        # fp16 overflows skip steps through the scaler (as in the Trainer), so the guard is off there
        self.scaler = torch.amp.GradScaler(device.type) if args.fp16 else None
        self.guard = guard if self.scaler is None else None
        self.accumulation = max(int(args.gradient_accumulation_steps), 1)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Forward passes under bf16/fp16 autocast when the run asks for mixed precision."""
        if self.dtype is None:
            yield
            return
        with torch.autocast(self.device.type, dtype=self.dtype):
            yield

    def backward(self, loss: torch.Tensor) -> None:
        """Gradients of one mini-batch, scaled so `accumulation` of them make one step."""
        loss = loss / self.accumulation
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, step_number: int, loss_finite: bool) -> float:
        """Clip and apply the accumulated gradients; a non-finite step leaves weights and optimizer state as they
        were (counted by the guard). Returns the gradient norm before clipping."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = clip_gradients(self.params, self.args.max_grad_norm or float("inf"))
        finite = loss_finite and bool(torch.isfinite(grad_norm))
        if self.guard is not None:
            self.guard.record(finite, step_number)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips the step itself on inf/NaN gradients
            self.scaler.update()
        elif finite or self.guard is None:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    def state_dict(self, sharded_modules: torch.nn.Module | None = None) -> dict:
        """The optimizer, scheduler (and scaler) state. With `sharded_modules` (the trained modules, FSDP2-sharded)
        the optimizer state is gathered collectively as full tensors (on the first process; every process calls)."""
        if sharded_modules is not None:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            optimizer = get_optimizer_state_dict(sharded_modules, self.optimizer,
                                                 options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            optimizer = self.optimizer.state_dict()
        state = {"optimizer": optimizer, "scheduler": self.scheduler.state_dict()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict, sharded_modules: torch.nn.Module | None = None) -> None:
        if sharded_modules is not None:  # full tensors scattered into the shards
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(sharded_modules, self.optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
