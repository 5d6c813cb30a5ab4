"""Mixtures of experts: the router's load-balancing loss and the router's parameters, found the way transformers
lays them out across families (Qwen2/3-MoE, Mixtral, OLMoE, GPT-OSS, DeepSeek-V3, ...), with no per-family table.

The loss is the model's own (`output_router_logits` makes its forward return `aux_loss`, which transformers adds to
a causal LM's loss with `router_aux_loss_coef`); lmforge only decides whether it is on and with which weight, and
adds it where lmforge computes a loss itself (RL, distillation)."""

from __future__ import annotations

import logging
import math
import re
import sys
from typing import Any

import torch

from lmforge.config.architecture import num_experts, text_config
from lmforge.errors import ConfigError

logger = logging.getLogger(__name__)

# a router is the gate inside a block of experts: `mlp.gate` (Qwen-MoE, DeepSeek), `block_sparse_moe.gate`
# (Mixtral), `mlp.router` (GPT-OSS); its first dimension is the number of experts
_ROUTER_NAME = re.compile(r"\.(gate|router)(\.|$)")


def has_router_loss(config: Any) -> bool:
    """The architecture computes a load-balancing loss (DeepSeek-V3 balances by a bias instead and has none)."""
    text = text_config(config)
    return hasattr(text, "output_router_logits") and hasattr(text, "router_aux_loss_coef")


def with_router_loss(config: Any, coef: float | None) -> Any:
    """`config` with the router loss on at weight `coef` (off at 0); unchanged for None (the checkpoint decides)."""
    if coef is None:
        return config
    if not has_router_loss(config):
        raise ConfigError(f"Config error: router_aux_loss_coef is set ({coef}) but '{config.model_type}' has no "
                          "router load-balancing loss (it is not a mixture of experts, or it balances its experts "
                          "without one).")
    text = text_config(config)
    text.output_router_logits, text.router_aux_loss_coef = coef > 0, float(coef)
    return config


def router_loss_coef(model_or_config: Any) -> float:
    """The weight the router loss is trained with: the config's coefficient where `output_router_logits` is on,
    else 0."""
    text = text_config(getattr(model_or_config, "config", model_or_config))
    if not has_router_loss(text) or not getattr(text, "output_router_logits", False):
        return 0.0
    return float(text.router_aux_loss_coef or 0.0)


def with_router_loss_added(loss: torch.Tensor, aux: torch.Tensor | None, coef: float,
                           share: float = 1.0) -> torch.Tensor:
    """`loss` + `coef` x the model's aux loss (x `share`: these rows' part of what `loss` is normalised over), where
    the forward returned one: a loss lmforge computes itself adds it as a causal LM's own loss does."""
    return loss + coef * share * aux.to(loss.device, loss.dtype) if coef and aux is not None else loss


def decoder_router_loss(model: torch.nn.Module, outputs: Any, attention_mask: torch.Tensor | None
                        ) -> torch.Tensor | None:
    """The load-balancing loss of a pass through the decoder alone (distillation projects the hidden states
    itself): transformers' own `load_balancing_loss_func` of the model's module, on the router logits the decoder
    returned (None when it returned none)."""
    router_logits = getattr(outputs, "router_logits", None)
    loss_func = getattr(sys.modules.get(type(model).__module__), "load_balancing_loss_func", None)
    if not router_logits or loss_func is None:
        return None
    return loss_func(router_logits, num_experts(model.config), text_config(model.config).num_experts_per_tok,
                     attention_mask)


def no_router_outputs(model: torch.nn.Module) -> dict[str, bool]:
    """Keyword arguments for a forward that decodes with the KV cache: no router logits. Transformers computes the
    router loss whenever they are on, over the whole attention mask, which fails for the one new token of a decoding
    step (a model trained with the loss has them on in its config)."""
    config = getattr(model, "config", None)
    return {"output_router_logits": False} if config is not None and hasattr(text_config(config),
                                                                              "output_router_logits") else {}


class RouterLossTap:
    """A sequence classifier's router loss (reward models, `stage: cls`): transformers' classification heads drop
    the `aux_loss` their decoder's router logits give, so a hook on the decoder keeps its last output and mask, and
    `take` computes the loss the causal LM would have added."""

    def __init__(self, model: torch.nn.Module, decoder: torch.nn.Module):
        self.model, self.coef = model, router_loss_coef(model)
        self._last: tuple[Any, torch.Tensor | None] | None = None
        decoder.register_forward_hook(self._keep, with_kwargs=True)

    @classmethod
    def attach(cls, model: torch.nn.Module) -> RouterLossTap | None:
        """A tap on `model` (or the model inside a peft wrapper) when it is a classifier training a router loss."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        decoder = getattr(base, getattr(base, "base_model_prefix", "model"), None)
        if not type(base).__name__.endswith("ForSequenceClassification") or decoder is None or \
                not router_loss_coef(base):
            return None
        return cls(base, decoder)

    def _keep(self, module: torch.nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        if module.training:
            self._last = (output, kwargs.get("attention_mask"))

    def added_to(self, loss: torch.Tensor) -> torch.Tensor:
        """`loss` plus the router loss of the last training forward (each forward's loss takes its own once)."""
        if self._last is None:
            return loss
        outputs, mask = self._last
        self._last = None
        return with_router_loss_added(loss, decoder_router_loss(self.model, outputs, mask), self.coef)


def _in_layer(name: str) -> str:
    """`model.layers.3.mlp.experts.down_proj` -> `mlp.experts.down_proj` (the part every layer shares)."""
    found = _LAYER.search(name)
    return name[found.end():] if found else name


def fused_expert_parameters(model: torch.nn.Module) -> list[str]:
    """The experts' weights a mixture of experts keeps as 3-D tensors (one slice per expert, transformers 5's
    layout: `mlp.experts.gate_up_proj`, `mlp.experts.down_proj`), as the name suffixes peft's `target_parameters`
    takes; none where the experts are separate linear layers (all-linear covers those)."""
    experts = num_experts(getattr(model, "config", None)) if hasattr(model, "config") else None
    if not experts:
        return []
    return sorted({_in_layer(name) for name, p in model.named_parameters()
                   if ".experts." in name and p.dim() == 3 and p.shape[0] == experts})


def experts_per_process(model: torch.nn.Module) -> int | None:
    """How many of each layer's experts this process holds when transformers split them over an expert-parallel
    mesh dimension ("ep"); None when the experts are not split that way."""
    experts = num_experts(getattr(model, "config", None)) if hasattr(model, "config") else None
    for name, param in model.named_parameters():
        mesh = getattr(param, "device_mesh", None)
        if experts and ".experts." in name and mesh is not None and "ep" in (mesh.mesh_dim_names or ()):
            return experts // mesh["ep"].size()
    return None


def router_modules(model: torch.nn.Module) -> list[str]:
    """The routers' module names, as suffixes peft's `target_modules` matches (`mlp.gate`, `mlp.router`)."""
    return sorted({_in_layer(name.rsplit(".", 1)[0]) for name, _ in router_parameters(model)})


def router_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The routers' parameters: those under a `gate`/`router` module of an MoE block whose first dimension is the
    number of experts (a gated MLP's `gate_proj` is not one)."""
    experts = num_experts(getattr(model, "config", None)) if hasattr(model, "config") else None
    if not experts:
        return []
    return [(name, p) for name, p in model.named_parameters()
            if _ROUTER_NAME.search(name) and p.dim() >= 1 and p.shape[0] == experts]


def freeze_router(model: torch.nn.Module) -> int:
    """Keep every router fixed; returns how many parameters that froze."""
    params = router_parameters(model)
    if not params:
        raise ConfigError("Config error: freeze_router is set but the model has no mixture-of-experts router.")
    for _, p in params:
        p.requires_grad_(False)
    frozen = sum(p.numel() for _, p in params)
    logger.info("freeze_router: %d router tensors (%s parameters) stay fixed", len(params), f"{frozen:,}")
    return frozen


_LAYER = re.compile(r"layers\.(\d+)\.")


class ExpertLoads:
    """How many tokens each expert of each layer received, counted by hooks on the routers (the modules whose class
    name ends in `Router`: transformers' TopKRouter returns the chosen experts' indices; a router that returns
    logits only has its top-k taken here) over every forward pass of the trained model since the last `read`."""

    ATTRIBUTE = "lmforge_expert_loads"  # on the model, where the run log finds it

    def __init__(self, routers: dict[int, torch.nn.Module], experts: int, top_k: int):
        self.experts, self.top_k = experts, top_k
        # counted where the router runs (no device sync per forward); read at log time only
        self.counts: dict[int, torch.Tensor | None] = {layer: None for layer in routers}
        self.last: dict[str, list[float]] = {}
        self._hooks = [module.register_forward_hook(self._counter(layer)) for layer, module in routers.items()]

    @classmethod
    def attach(cls, model: torch.nn.Module) -> ExpertLoads | None:
        """Count on `model`'s routers (None for a model without any)."""
        config = getattr(model, "config", None)
        experts = num_experts(config) if config is not None else None
        if not experts:
            return None
        routers = {}
        for name, module in model.named_modules():
            found = _LAYER.search(name)
            if found and type(module).__name__.lower().endswith("router") and int(found.group(1)) not in routers:
                routers[int(found.group(1))] = module
        if not routers:
            return None
        loads = cls(routers, experts, int(getattr(text_config(config), "num_experts_per_tok", 1) or 1))
        object.__setattr__(model, cls.ATTRIBUTE, loads)  # not a submodule: outside the state dict
        return loads

    def _counter(self, layer: int):
        def count(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, tuple) and len(output) >= 3 and not output[-1].is_floating_point():
                chosen = output[-1]
            else:
                logits = output[0] if isinstance(output, tuple) else output
                chosen = logits.topk(self.top_k, dim=-1).indices
            counts = torch.bincount(chosen.detach().reshape(-1), minlength=self.experts)
            self.counts[layer] = counts if self.counts[layer] is None else self.counts[layer] + counts
        return count

    def read(self) -> dict[str, float]:
        """The loads since the last read, as scalars for the log and trackers (each layer's busiest expert over the
        mean, and the normalised entropy of its load, averaged over layers and per layer); the fractions of each
        layer's tokens per expert (summing to one) are kept in `last` for the run log."""
        totals = {layer: c.double().cpu() for layer, c in sorted(self.counts.items()) if c is not None}
        fractions = {layer: c / c.sum() for layer, c in totals.items() if c.sum() > 0}
        self.counts = dict.fromkeys(self.counts)
        if not fractions:
            self.last = {}
            return {}
        self.last = {str(layer): [round(float(v), 6) for v in f] for layer, f in fractions.items()}
        peak = {layer: float(f.max() * self.experts) for layer, f in fractions.items()}
        entropy = {layer: float(-(f[f > 0] * f[f > 0].log()).sum() / math.log(self.experts))
                   for layer, f in fractions.items()}
        scalars = {"expert_load_max_over_mean": sum(peak.values()) / len(peak),
                   "expert_load_entropy": sum(entropy.values()) / len(entropy)}
        scalars.update({f"expert_load_max_over_mean/layer_{layer}": v for layer, v in peak.items()})
        return {k: round(v, 4) for k, v in scalars.items()}

    @classmethod
    def of(cls, model: Any) -> ExpertLoads | None:
        """The counter attached to `model` (or to the model inside a peft or accelerate wrapper)."""
        for candidate in (model, getattr(model, "module", None), getattr(model, "base_model", None),
                          getattr(getattr(model, "base_model", None), "model", None)):
            loads = getattr(candidate, cls.ATTRIBUTE, None) if candidate is not None else None
            if loads is not None:
                return loads
        return None
