"""Batch collation for the Trainer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


def _tensor(rows: list, pad: int, length: int) -> torch.Tensor:
    return torch.as_tensor([list(r) + [pad] * (length - len(r)) for r in rows], dtype=torch.long)


def _padded(ids: list, labels: list, pad_token_id: int, pad_to_multiple_of: int | None) -> dict[str, torch.Tensor]:
    length = max(len(x) for x in ids)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    return {"input_ids": _tensor(ids, pad_token_id, length), "labels": _tensor(labels, IGNORE_INDEX, length),
            "attention_mask": _tensor([[1] * len(x) for x in ids], 0, length)}


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
        batch = _padded([f["input_ids"] for f in features], [f["labels"] for f in features], self.pad_token_id,
                        self.pad_to_multiple_of)
        if "position_ids" in features[0]:
            length = batch.pop("attention_mask").shape[1]
            batch["position_ids"] = torch.as_tensor(
                [list(f["position_ids"]) + list(range(length - len(f["position_ids"]))) for f in features],
                dtype=torch.long)
            batch["use_cache"] = False
        return batch


@dataclass
class PairCollator:
    """Preference pairs -> one padded batch: the chosen sequences first, then the rejected ones in the same order
    (one forward pass scores both)."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        ids = [f["chosen_input_ids"] for f in features] + [f["rejected_input_ids"] for f in features]
        labels = [f["chosen_labels"] for f in features] + [f["rejected_labels"] for f in features]
        return _padded(ids, labels, self.pad_token_id, self.pad_to_multiple_of)


def reply_start(labels: list[int]) -> int:
    """Where the trained reply of an example starts (its first labelled token)."""
    return next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)


@dataclass
class KtoCollator:
    """Labelled replies -> a padded batch plus `desirable` and the KL batch: each prompt paired with the previous
    example's reply (mismatched pairs, from which KTO estimates KL(policy || reference))."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        ids = [list(f["input_ids"]) for f in features]
        labels = [list(f["labels"]) for f in features]
        starts = [reply_start(x) for x in labels]
        kl_ids, kl_labels = [], []
        for i, start in enumerate(starts):
            j = i - 1  # the previous example's reply (the last one's for the first)
            kl_ids.append(ids[i][:start] + ids[j][starts[j]:])
            kl_labels.append([IGNORE_INDEX] * start + labels[j][starts[j]:])
        batch = _padded(ids, labels, self.pad_token_id, self.pad_to_multiple_of)
        batch["desirable"] = torch.tensor([bool(f["kto_label"]) for f in features])
        kl = _padded(kl_ids, kl_labels, self.pad_token_id, self.pad_to_multiple_of)
        batch.update({f"kl_{k}": v for k, v in kl.items()})
        return batch
