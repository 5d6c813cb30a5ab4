"""Pack SFT examples into rows of at most `cutoff_len` tokens without any example attending to another.

Best-fit decreasing over the whole dataset (not per batch): examples are placed longest first, each into the row
whose free space fits it most tightly. Each example keeps position ids from 0, from which transformers builds a
block-diagonal mask (sdpa, eager) or flash-attention varlen boundaries; the first label of every example is ignored,
as it is in an unpacked batch where nothing precedes it. No token is dropped.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from datasets import Dataset

from lmforge.config.data import DataArguments
from lmforge.data.collate import IGNORE_INDEX


def uses_packing(args: DataArguments) -> bool:
    """SFT packs with `packing` or LLaMA-Factory's `neat_packing` (ours never lets examples attend to each other)."""
    return args.packing or args.neat_packing


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of total length <= capacity."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free space, bin id), sorted
    for i in order:
        size = lengths[i]
        if size > capacity:
            raise ValueError(f"example {i} has {size} tokens, more than the row capacity {capacity}")
        slot = bisect.bisect_left(free, (size, -1))
        if slot < len(free):
            space, b = free.pop(slot)
        else:
            space, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        if space - size > 0:
            bisect.insort(free, (space - size, b))
    return bins


def pack_examples(examples: Dataset, cutoff_len: int) -> Dataset:
    """Rows of packed examples with `input_ids`, `labels` and `position_ids`."""
    input_ids, labels = examples["input_ids"], examples["labels"]
    input_ids, labels = list(input_ids), list(labels)
    rows: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
    for members in best_fit_decreasing([len(x) for x in input_ids], cutoff_len):
        row_ids, row_labels, row_positions = [], [], []
        for i in members:
            row_ids += input_ids[i]
            row_labels += [IGNORE_INDEX] + list(labels[i][1:])
            row_positions += range(len(input_ids[i]))
        rows["input_ids"].append(row_ids)
        rows["labels"].append(row_labels)
        rows["position_ids"].append(row_positions)
    return Dataset.from_dict(rows)


def packing_efficiency(examples: Dataset, cutoff_len: int) -> tuple[int, float]:
    """(rows, fraction of the packed rows' `cutoff_len` slots holding real tokens)."""
    lengths = [len(x) for x in examples["input_ids"]]
    rows = len(best_fit_decreasing(lengths, cutoff_len))
    return rows, sum(lengths) / max(rows * cutoff_len, 1)
