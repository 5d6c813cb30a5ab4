"""Memory-light optimizers that transformers' `optim` does not name (`optimizer: muon | adam_mini | badam`), built
from the same arguments its Trainer reads (learning rate, weight decay, betas, epsilon). The ones it does name
(GaLore, APOLLO, 8-bit and paged AdamW, Adafactor, LOMO) go through `optim` unchanged.

- `muon`: torch's own `torch.optim.Muon` for the 2-D weight matrices inside the decoder layers (one momentum buffer,
  half of AdamW's state), with its learning rate matched to AdamW's update size (`adjust_lr_fn="match_rms_adamw"`,
  so one `learning_rate` serves both); embeddings, the output layer, norms and biases keep AdamW, as Muon's authors
  and torch's documentation prescribe.
- `adam_mini`: Adam-mini (Zhang et al., 2024): Adam's first moment, but one second moment per block of the
  Hessian's structure instead of one per weight: per attention head for the query and key projections, per output
  row for the other matrices inside the layers, one per tensor for norms and biases; embeddings and the output layer
  keep Adam's per-weight moment. About half of AdamW's state. Why our own: the `adam-mini` package partitions by
  lists of parameter names of its own (lmforge finds the decoder layers and reads the head counts from the config,
  for any architecture it trains), and it pulls in a package for a few lines of tensor arithmetic.
- `badam`: BAdam (Luo et al., 2024): block coordinate descent. One decoder layer trains at a time with AdamW, the
  active layer switching every `badam_switch_interval` steps (`badam_switch_mode`: ascending, descending, random);
  the others are frozen, so gradients and optimizer state exist for one layer only. Embeddings, the output layer and
  the final norm stay frozen, as in the paper. The active block is a function of the optimizer's step count, which
  its state dict keeps, so a resumed run trains the block the uninterrupted one would.
"""

from __future__ import annotations

import random
from typing import Any

import torch

MEMORY_LIGHT = ("muon", "adam_mini", "badam")


class CombinedOptimizer(torch.optim.Optimizer):
    """Several optimizers over disjoint parameters, seen as one by the Trainer, its learning-rate scheduler (which
    writes `param_groups`: the inner optimizers' own group dicts) and its checkpoints (one state dict)."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = [o for o in optimizers if o.param_groups]
        super().__init__([group for o in self.optimizers for group in o.param_groups], {})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for optimizer, state in zip(self.optimizers, state_dict["optimizers"], strict=True):
            optimizer.load_state_dict(state)


# GaLore's and APOLLO's optimizers keep a projector object (its rank, seed and orthogonal matrix) in the state of each
# matrix they project. The Trainer reloads a checkpoint's optimizer with torch.load(weights_only=True), which refuses
# classes it was not told of: without these, a GaLore or APOLLO run could not resume.
PROJECTOR_CLASSES = {"galore_torch": ("galore_torch.galore_projector", ("GaLoreProjector",)),
                     "apollo_torch": ("apollo_torch.svd_projector", ("GaLoreProjector",)),
                     "apollo_torch.random": ("apollo_torch.random_projector", ("GradientProjector",))}


def allow_resuming(optimizer: torch.optim.Optimizer) -> None:
    """Let a checkpoint of `optimizer` be loaded back with `weights_only=True` (GaLore's and APOLLO's projectors)."""
    import importlib

    package = type(optimizer).__module__.split(".")[0]
    for key, (module, names) in PROJECTOR_CLASSES.items():
        if key.split(".")[0] == package:
            loaded = importlib.import_module(module)
            torch.serialization.add_safe_globals([getattr(loaded, name) for name in names])


def build_optimizer(settings: Any, model: torch.nn.Module, args: Any) -> torch.optim.Optimizer:
    """The `optimizer` of the run's `settings` (its FinetuningArguments) over `model`'s trainable parameters, with
    the Trainer's arguments `args`."""
    name = settings.optimizer
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    betas, eps = (args.adam_beta1, args.adam_beta2), args.adam_epsilon
    if name == "muon":
        inside = _layer_parameters(model)
        matrices = [p for _, p in trainable if p.ndim == 2 and id(p) in inside]
        rest = [p for _, p in trainable if not (p.ndim == 2 and id(p) in inside)]
        muon = torch.optim.Muon(matrices, lr=args.learning_rate, weight_decay=args.weight_decay,
                                adjust_lr_fn="match_rms_adamw") if matrices else None
        adamw = torch.optim.AdamW(rest, lr=args.learning_rate, weight_decay=args.weight_decay, betas=betas,
                                  eps=eps) if rest else None  # none: LoRA's matrices are all inside the layers
        return CombinedOptimizer(*(o for o in (muon, adamw) if o is not None))
    if name == "adam_mini":
        return AdamMini(_adam_mini_groups(model, trainable, args.weight_decay), lr=args.learning_rate, betas=betas,
                        eps=eps)
    if name == "badam":
        return BlockOptimizer(model, args, settings.badam_switch_interval, settings.badam_switch_mode)
    raise ValueError(f"unknown optimizer '{name}' (known: {', '.join(MEMORY_LIGHT)})")


def _layer_parameters(model: torch.nn.Module) -> set[int]:
    """The ids of the parameters inside the decoder layers (not the embeddings, output layer or final norm); none
    for an architecture whose layers are not found (its matrices are then treated as embeddings are)."""
    from lmforge.model.chunked_loss import causal_lm
    from lmforge.model.decoder import decoder_layers

    try:
        _, layers = decoder_layers(causal_lm(model))
    except Exception:  # noqa: BLE001 - an architecture lmforge cannot find the layers of
        return set()
    return {id(p) for layer in layers for p in layer.parameters()}


# ---- Adam-mini --------------------------------------------------------------------------------------------------

QUERY_KEY = (("q_proj", "num_attention_heads"), ("k_proj", "num_key_value_heads"), ("query", "num_attention_heads"),
             ("key", "num_attention_heads"))


def _adam_mini_groups(model: torch.nn.Module, trainable: list[tuple[str, torch.nn.Parameter]],
                      weight_decay: float) -> list[dict[str, Any]]:
    """One parameter group per tensor, naming how its second moment is shared: `blocks` rows share one (the heads of
    a query/key projection, every output row of another matrix), 0: one per weight (embeddings, output layer), 1:
    one for the whole tensor (norms, biases). Weight decay on the matrices only, as the Trainer decays."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    inside = _layer_parameters(model)
    groups = []
    for name, param in trainable:
        if param.ndim < 2:
            blocks = 1
        elif id(param) not in inside:
            blocks = 0
        else:
            heads = next((getattr(config, attr, None) for key, attr in QUERY_KEY
                          if name.endswith(f"{key}.weight")), None)
            blocks = heads if heads and param.shape[0] % heads == 0 else param.shape[0]
        groups.append({"params": [param], "blocks": blocks, "weight_decay": weight_decay if param.ndim >= 2 else 0.0})
    return groups


class AdamMini(torch.optim.Optimizer):
    """Adam with a second moment shared within blocks (see the module's docstring); decoupled weight decay."""

    def __init__(self, groups: list[dict[str, Any]], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        super().__init__(groups, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": 0.0, "blocks": 0})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad.float()
                state = self.state[param]
                if not state:
                    state["step"] = 0  # a number, not a tensor: the update reads it (and a planned step cannot)
                    state["exp_avg"] = torch.zeros_like(param, dtype=torch.float32)
                    blocks = group["blocks"]
                    shape = param.shape if blocks == 0 else (blocks, 1) if blocks > 1 else ()
                    state["exp_avg_sq"] = torch.zeros(shape, dtype=torch.float32, device=param.device)
                state["step"] += 1
                step = state["step"]
                state["exp_avg"].lerp_(grad, 1 - beta1)
                blocks = group["blocks"]
                squares = grad.square() if blocks == 0 else grad.reshape(blocks, -1).square().mean(-1, keepdim=True) \
                    if blocks > 1 else grad.square().mean()
                state["exp_avg_sq"].mul_(beta2).add_(squares, alpha=1 - beta2)
                denominator = (state["exp_avg_sq"] / (1 - beta2 ** step)).sqrt_().add_(group["eps"])
                update = state["exp_avg"] / (1 - beta1 ** step)
                update = (update.reshape(blocks, -1) / denominator).reshape(param.shape) if blocks > 1 \
                    else update / denominator
                if group["weight_decay"]:
                    param.mul_(1 - group["lr"] * group["weight_decay"])
                param.add_(update.to(param.dtype), alpha=-group["lr"])
        return loss


# ---- BAdam -------------------------------------------------------------------------------------------------------

class BlockOptimizer(torch.optim.Optimizer):
    """AdamW over one decoder layer at a time (see the module's docstring). `param_groups` are the active block's
    (the learning-rate scheduler writes them), carried over when the block switches; the state is the block's and is
    dropped at a switch, as BAdam does."""

    def __init__(self, model: torch.nn.Module, args: Any, interval: int, mode: str) -> None:
        from lmforge.model.chunked_loss import causal_lm
        from lmforge.model.decoder import decoder_layers

        _, layers = decoder_layers(causal_lm(model))
        self.model, self.blocks = model, [list(layer.parameters()) for layer in layers]
        self.interval, self.mode, self.seed = interval, mode, int(args.seed)
        self.kwargs = {"lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2),
                       "eps": args.adam_epsilon, "weight_decay": args.weight_decay}
        self.steps_taken = 0
        self.active = -1
        self.inner: torch.optim.Optimizer | None = None
        self._activate()
        super().__init__(self.inner.param_groups, {})
        self.param_groups, self.state = self.inner.param_groups, self.inner.state

    def block_at(self, step: int) -> int:
        """The block trained at optimizer step `step`: the schedule is a function of the step alone."""
        count = len(self.blocks)
        rounds, slot = divmod(step // self.interval, count)
        if self.mode == "descending":
            return count - 1 - slot
        if self.mode == "random":
            order = list(range(count))
            random.Random(self.seed * 1_000_003 + rounds).shuffle(order)
            return order[slot]
        return slot

    def _activate(self) -> None:
        block = self.block_at(self.steps_taken)
        if block == self.active:
            return
        lr = self.inner.param_groups[0]["lr"] if self.inner is not None else self.kwargs["lr"]
        for param in self.model.parameters():
            param.requires_grad_(False)
            param.grad = None
        for param in self.blocks[block]:
            param.requires_grad_(True)
        decayed = [p for p in self.blocks[block] if p.ndim >= 2]
        plain = [p for p in self.blocks[block] if p.ndim < 2]
        self.inner = torch.optim.AdamW([{"params": decayed}, {"params": plain, "weight_decay": 0.0}],
                                       **{**self.kwargs, "lr": lr})
        for group in self.inner.param_groups:
            group.setdefault("initial_lr", self.kwargs["lr"])
        self.active = block
        self.param_groups = self.inner.param_groups
        self.state = self.inner.state

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        self.inner.step()
        self.steps_taken += 1
        self._activate()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"steps_taken": self.steps_taken, "inner": self.inner.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps_taken = state_dict["steps_taken"]
        self._activate()
        self.inner.load_state_dict(state_dict["inner"])
        self.param_groups, self.state = self.inner.param_groups, self.inner.state

