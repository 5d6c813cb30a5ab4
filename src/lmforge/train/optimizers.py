"""Memory-light optimizers that transformers' `optim` does not name (`optimizer: muon`), built from the
same arguments its Trainer reads (learning rate, weight decay, betas, epsilon). The ones it does name (GaLore,
APOLLO, 8-bit and paged AdamW, Adafactor, LOMO) go through `optim` unchanged.

- `muon`: torch's own `torch.optim.Muon` for the 2-D weight matrices inside the decoder layers (one momentum buffer,
  half of AdamW's state), with its learning rate matched to AdamW's update size (`adjust_lr_fn="match_rms_adamw"`,
  so one `learning_rate` serves both); embeddings, the output layer, norms and biases keep AdamW, as Muon's authors
  and torch's documentation prescribe.
"""

from __future__ import annotations

from typing import Any

import torch

MEMORY_LIGHT = ("muon",)


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


def build_optimizer(name: str, model: torch.nn.Module, args: Any) -> torch.optim.Optimizer:
    """The `optimizer: NAME` of the run over `model`'s trainable parameters, with the Trainer's arguments `args`."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    betas, eps = (args.adam_beta1, args.adam_beta2), args.adam_epsilon
    if name == "muon":
        matrices = [p for n, p in trainable if p.ndim == 2 and _inside_layers(n)]
        rest = [p for n, p in trainable if not (p.ndim == 2 and _inside_layers(n))]
        muon = torch.optim.Muon(matrices, lr=args.learning_rate, weight_decay=args.weight_decay,
                                adjust_lr_fn="match_rms_adamw") if matrices else None
        adamw = torch.optim.AdamW(rest, lr=args.learning_rate, weight_decay=args.weight_decay, betas=betas, eps=eps)
        return CombinedOptimizer(*(o for o in (muon, adamw) if o is not None))
    raise ValueError(f"unknown optimizer '{name}' (known: {', '.join(MEMORY_LIGHT)})")


def _inside_layers(name: str) -> bool:
    """A weight of a decoder layer (`...layers.3.mlp.up_proj.weight`), not an embedding or the output layer."""
    return ".layers." in name or ".h." in name or ".blocks." in name
