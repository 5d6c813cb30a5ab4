"""Batch collation for the Trainer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


def _tensor(rows: list, pad: int, length: int) -> torch.Tensor:
    return torch.as_tensor([list(r) + [pad] * (length - len(r)) for r in rows], dtype=torch.long)


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


@dataclass
class SftCollator:
    """Examples with their own labels, padded to the longest in the batch (right side; pad labels ignored).

    Packed rows (`position_ids` present) need no attention mask: padding is given position ids from 0 like one more
    packed example, so it attends only to itself and is never trained; the KV cache is disabled so transformers
    derives the per-example attention blocks from the position ids.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor | bool]:
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": _tensor([f["input_ids"] for f in features], self.pad_token_id, length),
                 "labels": _tensor([f["labels"] for f in features], IGNORE_INDEX, length)}
        if "position_ids" in features[0]:
            batch["position_ids"] = torch.as_tensor(
                [list(f["position_ids"]) + list(range(length - len(f["position_ids"]))) for f in features],
                dtype=torch.long)
            batch["use_cache"] = False
        else:
            batch["attention_mask"] = _tensor([[1] * len(f["input_ids"]) for f in features], 0, length)
        return batch
