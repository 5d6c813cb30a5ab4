"""`lmforge eval task=cls`: a classifier (a `stage: cls` output, or any sequence-classification checkpoint) scored on a
labelled file: scikit-learn's metrics for its problem type, and each row's prediction."""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lmforge.config.schema import EvalConfig
from lmforge.data.classification import build_classification_data
from lmforge.errors import ConfigError
from lmforge.metrics import classification_metrics, classifier_predictions
from lmforge.model.classifier import classifier_logits, head_of, threshold_of


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
