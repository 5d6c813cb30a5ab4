"""Weights as a checkpoint stores them and as the model holds them in memory.

transformers 5 loads some architectures into another layout than their files (a mixture of experts' per-expert
`experts.N.gate_proj/up_proj/down_proj` become fused 3-D `experts.gate_up_proj/down_proj`; some fuse q/k/v) and
converts back as it saves. A state dict read from a saved directory therefore does not fit `model.load_state_dict`:
the Trainer's own resume warns about "unexpected keys" and trains on with the experts it started from.
"""

from __future__ import annotations

from copy import deepcopy

import torch


def in_model_layout(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state_dict` as read from files `model.save_pretrained` wrote, in the layout of `model.state_dict()`.

    Why our own loop: transformers applies its conversions only inside `from_pretrained` (together with device
    placement, quantization and sharding) and exposes the way back alone (`revert_weight_conversion`, used as it
    saves). This runs the same conversions (the model's `_weight_conversions`, or its architecture's mapping) in the
    loading direction with transformers' own key matching and operations, as that function does in reverse."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (
            PrefixChange,
            WeightConverter,
            WeightRenaming,
            dot_natural_key,
            rename_source_key,
        )
    except ImportError:  # transformers 4.x holds weights as its files store them
        return state_dict

    conversions = getattr(model, "_weight_conversions", None)
    if conversions is None:
        # a model built in memory: its architecture's mapping, without the prefix guess of a load
        conversions = [c for c in get_model_conversion_mapping(model, add_legacy=False)
                       if not isinstance(c, PrefixChange)]
    if not conversions:
        return state_dict
    renamings = [c for c in conversions if isinstance(c, WeightRenaming)]
    converters = [c for c in conversions if isinstance(c, WeightConverter)]
    by_pattern = {pattern: c for c in converters for pattern in c.source_patterns}
    pending: dict[str, WeightRenaming | WeightConverter] = {}
    for key, tensor in sorted(state_dict.items(), key=lambda item: dot_natural_key(item[0])):
        target, pattern = rename_source_key(key, renamings, converters)
        if pattern is None:
            transform = pending.setdefault(target, WeightRenaming(key, target))
            pattern = key
        else:
            transform = pending.setdefault(target, deepcopy(by_pattern[pattern]))
        transform.add_tensor(target, key, pattern, tensor)
    converted = {}
    for target, transform in pending.items():
        for name, value in transform.convert(target, model=model, config=model.config).items():
            converted[name] = value[0] if isinstance(value, list) else value
    return converted
