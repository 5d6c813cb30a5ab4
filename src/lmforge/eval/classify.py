"""`lmforge eval task=cls`: a classifier (a `stage: cls` output, or any sequence-classification checkpoint) scored on a
labelled file: scikit-learn's metrics for its problem type, and each row's prediction."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lmforge.config.schema import EvalConfig
from lmforge.data.classification import build_classification_data
from lmforge.errors import ConfigError
from lmforge.jsonl import write_jsonl
from lmforge.metrics import classification_metrics, classifier_predictions
from lmforge.model.classifier import classifier_logits, head_of, load_classifier, threshold_of


def evaluate_classifier(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: EvalConfig
                        ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    config = model.config
    if not any(a.endswith("ForSequenceClassification") for a in (config.architectures or [type(model).__name__])):
        raise ConfigError(f"Config error ({cfg.source}): 'task: cls' scores a sequence classifier; "
                          f"'{cfg.model.model_name_or_path}' is a {type(model).__name__}.")
    problem_type, names = head_of(model, tokenizer)
    threshold = threshold_of(cfg.model.adapter_name_or_path or cfg.model.model_name_or_path)
    data = build_classification_data(dataclasses.replace(cfg.data, val_size=0.0), tokenizer, cfg.eval.seed,
                                     problem_type, names or None)
    columns = [c for c in ("input_ids", "token_type_ids") if c in data.train.column_names]
    rows = data.train.select_columns(columns).to_list()
    scores = classifier_logits(model, tokenizer, rows, cfg.eval.batch_size, progress=True)
    labels = data.train["labels"]
    results = {"problem_type": problem_type, "rows": len(rows),
               "skipped": {name: s.get("skipped", 0) for name, s in data.stats.items()},
               **classification_metrics(problem_type, scores, labels, threshold)}
    predictions = classifier_predictions(scores, problem_type, names, threshold)
    for row, label in zip(predictions, labels, strict=True):
        row["label"] = label if problem_type != "single_label_classification" else names[int(label)]
    return results, predictions


def predict_file(model_dir: str, path: str, output: str | None, batch_size: int = 32, text_column: str = "text",
                 pair_column: str | None = None) -> list[dict[str, Any]]:
    """Each row of `path` classified (batched, with a progress bar): its predicted label(s) or value and the
    probabilities by class; written to `output` (JSON lines, atomically) when given. Rows without a text are
    errors naming the row."""
    from lmforge.data.classification import encode_pair
    from lmforge.data.records import read_records
    from lmforge.data.registry import resolve_sources
    from lmforge.errors import DataError

    model, tokenizer = load_classifier(model_dir)
    problem_type, names = head_of(model, tokenizer)
    records = [r for spec in resolve_sources(path, os.path.dirname(path) or ".") for r in read_records(spec)]
    length = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else 512
    encoded = []
    for i, record in enumerate(records):
        text = record.get(text_column) if isinstance(record, dict) else None
        pair = record.get(pair_column) if pair_column and isinstance(record, dict) else None
        if not isinstance(text, str) or (pair_column and not isinstance(pair, str)):
            raise DataError(f"Data error: '{path}' row {i}: needs text in '{text_column}'"
                            + (f" and '{pair_column}'" if pair_column else "") + ".")
        encoded.append(encode_pair(tokenizer, text, pair, length)[0])
    logits = classifier_logits(model, tokenizer, encoded, batch_size, progress=True)
    rows = classifier_predictions(logits, problem_type, names, threshold_of(model_dir))
    for row, record in zip(rows, records, strict=True):
        row["text"] = record[text_column]
    if output:
        write_jsonl(output, rows)
    return rows
