"""Batch collation for the Trainer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass
class PretrainCollator:
    """Blocks are all `cutoff_len` long, so no padding. Labels are the inputs (the model shifts them).

    With document masking (`position_ids` present) the model sees restarting position ids, from which transformers
    builds a block-diagonal causal mask (or flash-attention varlen boundaries), and the label of each document's first
    token is ignored: nothing is predicted across a document boundary, so the loss equals that of each document alone.
    """

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor | bool]:
        input_ids = torch.as_tensor([list(f["input_ids"]) for f in features], dtype=torch.long)
        batch = {"input_ids": input_ids, "labels": input_ids.clone()}
        if "position_ids" in features[0]:
            position_ids = torch.as_tensor([list(f["position_ids"]) for f in features], dtype=torch.long)
            batch["position_ids"] = position_ids
            batch["labels"][position_ids == 0] = IGNORE_INDEX
            # transformers only derives document boundaries from position ids when no KV cache is built; a model
            # whose config says use_cache=True would otherwise attend across documents.
            batch["use_cache"] = False
        return batch
