"""Labelled texts for `stage: cls`: rows of a text (and optionally a second text) and a label -> token ids and a
label the sequence-classification head trains on.

Sources are any layout lmforge reads (CSV, JSON, JSON Lines, parquet, a `save_to_disk` folder, a hub dataset, a
dataset_info.json name) with the columns `text_column`, `text_pair_column` and `label_column`. Labels may be names
or ids (single-label), lists of them (multi-label) or numbers (regression). A row with an empty text, an unknown
label or a label of the wrong type is skipped and counted per reason with its row number; nothing is dropped
silently. Texts longer than `cutoff_len` tokens are truncated (counted).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from lmforge.config.data import DataArguments
from lmforge.data.formats import SkipReport
from lmforge.data.loading import split_validation
from lmforge.data.records import read_records
from lmforge.data.registry import resolve_sources
from lmforge.data.skips import SkipRecord
from lmforge.errors import DataError

logger = logging.getLogger(__name__)

SINGLE, MULTI, REGRESSION = "single_label_classification", "multi_label_classification", "regression"


@dataclass
class ClassificationData:
    train: Dataset  # input_ids, (token_type_ids,) labels, source, record
    eval: Dataset | None
    problem_type: str
    label_names: list[str]  # empty for regression
    stats: dict[str, dict] = field(default_factory=dict)


def _rows(args: DataArguments, names: str) -> list[tuple[str, int, dict]]:
    out = []
    for spec in resolve_sources(names, args.dataset_dir, allow_absolute=args.allow_absolute_file_name):
        records = read_records(spec)
        if args.max_samples is not None:
            records = records[: args.max_samples]
        out += [(spec.name, i, r) for i, r in enumerate(records)]
    return out


def infer_problem_type(values: list[Any]) -> str:
    """Multi-label when label cells are lists, regression when they are non-integer numbers, else single-label."""
    present = [v for v in values if v is not None and v != ""]
    if any(isinstance(v, list) for v in present):
        return MULTI
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present) and \
            any(isinstance(v, float) and not float(v).is_integer() for v in present):
        return REGRESSION
    return SINGLE


def infer_label_names(values: list[Any]) -> list[str]:
    """The classes found: integer ids 0..max (named by their number), or the sorted names."""
    flat = [x for v in values for x in (v if isinstance(v, list) else [v]) if x is not None and x != ""]
    if flat and all(isinstance(x, int) and not isinstance(x, bool) for x in flat):
        return [str(i) for i in range(max(flat) + 1)]
    return sorted({str(x) for x in flat})


class LabelCoder:
    """A label cell -> the training label (class id, multi-hot floats, or a float)."""

    def __init__(self, problem_type: str, label_names: list[str], column: str):
        self.problem_type, self.names, self.column = problem_type, label_names, column
        self.ids = {name: i for i, name in enumerate(label_names)}

    def _id(self, value: Any) -> int:
        if isinstance(value, bool) or value is None or value == "":
            raise SkipRecord(f"'{self.column}' is missing or not a class")
        if isinstance(value, int | float) and float(value).is_integer() and not isinstance(value, str):
            index = int(value)
            if 0 <= index < len(self.names) and str(value) not in self.ids:
                return index
            value = str(index)
        if not isinstance(value, str):
            raise SkipRecord(f"'{self.column}' must be a class name or id, got {type(value).__name__}")
        if value not in self.ids:
            raise SkipRecord(f"unknown label '{value[:40]}' (classes: {', '.join(self.names[:10])})")
        return self.ids[value]

    def __call__(self, value: Any) -> Any:
        if self.problem_type == REGRESSION:
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise SkipRecord(f"'{self.column}' must be a number, got {type(value).__name__}")
            try:
                return float(value)
            except ValueError:
                raise SkipRecord(f"'{self.column}' must be a number, got '{str(value)[:40]}'") from None
        if self.problem_type == MULTI:
            values = value if isinstance(value, list) else [value]
            hot = [0.0] * len(self.names)
            for v in values:
                hot[self._id(v)] = 1.0
            return hot
        return self._id(value)


def _text(record: dict, column: str) -> str:
    value = record.get(column)
    if not isinstance(value, str):
        raise SkipRecord(f"'{column}' must be text, got {type(value).__name__}" if value is not None
                         else f"no '{column}' column")
    if not value.strip():
        raise SkipRecord(f"'{column}' is empty")
    return value


def encode_pair(tokenizer: PreTrainedTokenizerBase, text: str, pair: str | None, cutoff_len: int
                ) -> tuple[dict[str, list[int]], bool]:
    """Token ids (and token_type_ids where the tokenizer makes them) of a text or a text pair within `cutoff_len`,
    and whether it was truncated. A tokenizer that joins pairs with no special token between them (decoders' BPE)
    gets its separator (or EOS) between the two texts."""
    if pair is not None and tokenizer.num_special_tokens_to_add(pair=True) == 0:
        sep = tokenizer.sep_token or tokenizer.eos_token or "\n"
        text, pair = f"{text}{sep}{pair}", None
    full = tokenizer(text, pair, add_special_tokens=True)
    truncated = len(full["input_ids"]) > cutoff_len
    if truncated:
        full = tokenizer(text, pair, add_special_tokens=True, truncation=True, max_length=cutoff_len)
    return {k: list(v) for k, v in full.items() if k in ("input_ids", "token_type_ids")}, truncated


def build_classification_data(args: DataArguments, tokenizer: PreTrainedTokenizerBase, seed: int,
                              problem_type: str | None = None, label_names: list[str] | None = None
                              ) -> ClassificationData:
    """The labelled rows of `dataset` (and `eval_dataset`, or `val_size` of them held out), encoded."""
    train_rows = _rows(args, args.dataset)
    eval_rows = _rows(args, args.eval_dataset) if args.eval_dataset else []
    cells = [r.get(args.label_column) for _, _, r in train_rows if isinstance(r, dict)]
    problem_type = problem_type or infer_problem_type(cells)
    names = [] if problem_type == REGRESSION else (list(label_names) if label_names else infer_label_names(cells))
    if problem_type != REGRESSION and len(names) < 2:
        raise DataError(f"Data error: '{args.label_column}' holds {len(names)} class(es) in the training data; "
                        "classification needs at least 2 (set `label_names`).")
    coder = LabelCoder(problem_type, names, args.label_column)
    stats: dict[str, dict] = {}

    def encode(rows: list[tuple[str, int, dict]]) -> Dataset:
        reports: dict[str, SkipReport] = {}
        columns: dict[str, list] = {"input_ids": [], "labels": [], "source": [], "record": []}
        pair_types: list[list[int]] = []
        truncated = Counter()
        for source, index, record in rows:
            report = reports.setdefault(source, SkipReport(source))
            try:
                if not isinstance(record, dict):
                    raise SkipRecord("row is not an object")
                text = _text(record, args.text_column)
                pair = _text(record, args.text_pair_column) if args.text_pair_column else None
                label = coder(record.get(args.label_column))
                encoded, cut = encode_pair(tokenizer, text, pair, args.cutoff_len)
            except SkipRecord as err:
                report.add(index, str(err))
                continue
            truncated[source] += cut
            columns["input_ids"].append(encoded["input_ids"])
            if "token_type_ids" in encoded:
                pair_types.append(encoded["token_type_ids"])
            columns["labels"].append(label)
            columns["source"].append(source)
            columns["record"].append(index)
        for source, report in reports.items():
            count = sum(1 for s, _, _ in rows if s == source)
            stats[source] = {"records": count, "examples": count - report.total, "skipped": report.total,
                             "skip_reasons": dict(report.reasons), "truncated": truncated[source]}
            if report.total:
                logger.warning(report.summary())
        if pair_types and len(pair_types) == len(columns["input_ids"]):
            columns["token_type_ids"] = pair_types
        return Dataset.from_dict(columns)

    train = encode(train_rows)
    if len(train) == 0:
        raise DataError("Data error: no usable labelled row in " + "; ".join(
            f"{name}: {', '.join(s['skip_reasons']) or 'no rows'}" for name, s in stats.items()))
    if eval_rows:
        evaluation = encode(eval_rows)
    else:
        splits = split_validation(train, args.val_size, seed)
        train, evaluation = splits.train, splits.eval
    logger.info("cls: %s, %d classes; %s train rows%s", problem_type, len(names), f"{len(train):,}",
                f", {len(evaluation):,} eval rows" if evaluation is not None else "")
    return ClassificationData(train, evaluation, problem_type, names, stats)


def balanced_weights(labels: list[int], classes: int) -> list[float]:
    """scikit-learn's "balanced" class weights: n_samples / (n_classes * count of the class)."""
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=np.asarray(labels))
    out = [1.0] * classes
    for cls, weight in zip(present.tolist(), weights.tolist(), strict=True):
        out[int(cls)] = float(weight)
    return out
