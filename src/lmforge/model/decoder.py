"""Where a model keeps its decoder layers: what freeze training, BAdam, HQQ, FP8 and the planner walk."""

from __future__ import annotations

import torch

from lmforge.errors import ConfigError
from lmforge.model import multimodal


def decoder_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The ModuleList of decoder layers (`model.layers`, `transformer.h`, ...): the one with num_hidden_layers
    entries."""
    n_layers = model.config.get_text_config().num_hidden_layers
    vision = [name for name, _ in multimodal.vision_tower(model)]
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers and \
                not any(name.startswith(v + ".") for v in vision):
            return name, module
    raise ConfigError(f"Config error: could not find the {n_layers} decoder layers of this "
                      f"{model.config.model_type} model (a list of num_hidden_layers modules).")
