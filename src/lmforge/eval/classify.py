"""`lmforge eval task=cls`: a classifier (a `stage: cls` output, or any sequence-classification checkpoint) scored on a
labelled file: scikit-learn's metrics for its problem type, and each row's prediction."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, PreTrainedModel, PreTrainedTokenizerBase

from lmforge.config.schema import EvalConfig
from lmforge.data.classification import REGRESSION, build_classification_data
from lmforge.errors import ConfigError
from lmforge.metrics import classification_metrics, classifier_predictions


@torch.no_grad()
def evaluate_classifier(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: EvalConfig
                        ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    config = model.config
    if not any(a.endswith("ForSequenceClassification") for a in (config.architectures or [type(model).__name__])):
        raise ConfigError(f"Config error ({cfg.source}): 'task: cls' scores a sequence classifier; "
                          f"'{cfg.model.model_name_or_path}' is a {type(model).__name__}.")
    problem_type = config.problem_type or ("regression" if config.num_labels == 1 else "single_label_classification")
    names = [] if problem_type == REGRESSION else [config.id2label[i] for i in range(config.num_labels)]
    data = build_classification_data(dataclasses.replace(cfg.data, val_size=0.0), tokenizer, cfg.eval.seed,
                                     problem_type, names or None)
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    columns = [c for c in ("input_ids", "token_type_ids") if c in data.train.column_names]
    rows = data.train.select_columns(columns).to_list()
    collate, logits = DataCollatorWithPadding(tokenizer), []
    for start in tqdm(range(0, len(rows), cfg.eval.batch_size), desc="classify", unit="batch"):
        batch = collate(rows[start: start + cfg.eval.batch_size])
        logits.append(model(**{k: v.to(model.device) for k, v in batch.items()}).logits.float().cpu())
    scores = torch.cat(logits).numpy()
    labels = data.train["labels"]
    results = {"problem_type": problem_type, "rows": len(rows),
               "skipped": {name: s.get("skipped", 0) for name, s in data.stats.items()},
               **classification_metrics(problem_type, scores, labels, 0.5)}
    predictions = classifier_predictions(scores, problem_type, names, 0.5)
    for row, label in zip(predictions, labels, strict=True):
        row["label"] = label if problem_type != "single_label_classification" else names[int(label)]
    return results, predictions
