"""Stage `cls`: sequence classification (single-label, multi-label, regression; texts or text pairs) with any model
that has a sequence-classification head: encoders (BERT, RoBERTa, DeBERTa-v2, ModernBERT) and decoders (Qwen2/3,
Llama: scored at the last non-pad token). transformers' Trainer with the model's own loss, or a class-weighted
cross-entropy (`class_weights`); scikit-learn's metrics in evaluation; the held-out predictions, a per-class report
and a confusion-matrix PNG beside the loss plot. The output loads with `AutoModelForSequenceClassification` and its
`id2label` names the classes.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
from transformers import DataCollatorWithPadding

from lmforge.config.schema import RunConfig
from lmforge.data.classification import (
    MULTI,
    REGRESSION,
    ClassificationData,
    balanced_weights,
    build_classification_data,
)
from lmforge.jsonl import write_json, write_jsonl
from lmforge.metrics import classification_metrics, classifier_predictions
from lmforge.model.adapters import apply_finetuning_type
from lmforge.model.build import CLS_HEAD_FILE, build_model
from lmforge.model.tokenizer import setup_tokenizer
from lmforge.train.runtime.log_callback import JsonlLogCallback
from lmforge.train.runtime.tracking import check_trackers, tracking_callbacks
from lmforge.train.setup import set_precision, trainer_arguments
from lmforge.train.stage_data import first_process_prepares
from lmforge.train.trainer import LoraPlusTrainer

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "eval_predictions.jsonl"


class ClassificationTrainer(LoraPlusTrainer):
    """The Trainer with a class-weighted cross-entropy when `class_weights` are given (label smoothing kept)."""

    def __init__(self, *args: Any, class_weights: list[float] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.class_weights = class_weights

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.class_weights:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        weight = torch.tensor(self.class_weights, device=outputs.logits.device, dtype=torch.float32)
        loss = torch.nn.functional.cross_entropy(outputs.logits.float(), labels, weight=weight,
                                                 label_smoothing=self.args.label_smoothing_factor)
        if self.router_tap is not None:  # a mixture of experts' router loss, as the unweighted path adds it
            loss = self.router_tap.added_to(loss)
        return (loss, outputs) if return_outputs else loss


def _weights(cfg: RunConfig, data: ClassificationData) -> list[float] | None:
    weights = cfg.finetuning.class_weights
    if weights is None:
        return None
    if data.problem_type != "single_label_classification":
        from lmforge.errors import ConfigError

        raise ConfigError(f"Config error ({cfg.source}): 'class_weights' applies to single-label classification, "
                          f"not {data.problem_type}.")
    if weights == "balanced":
        weights = balanced_weights(list(data.train["labels"]), len(data.label_names))
        logger.info("class_weights (balanced): %s", ", ".join(f"{n} {w:.3f}" for n, w in
                                                              zip(data.label_names, weights, strict=True)))
    if len(weights) != len(data.label_names):
        from lmforge.errors import ConfigError

        raise ConfigError(f"Config error ({cfg.source}): 'class_weights' has {len(weights)} values for "
                          f"{len(data.label_names)} classes ({', '.join(data.label_names)}).")
    return [float(w) for w in weights]


def classifier_head(data: ClassificationData) -> dict[str, Any]:
    if data.problem_type == REGRESSION:
        return {"num_labels": 1, "problem_type": REGRESSION}
    return {"num_labels": len(data.label_names), "problem_type": data.problem_type,
            "id2label": dict(enumerate(data.label_names)),
            "label2id": {name: i for i, name in enumerate(data.label_names)}}


def build_trainer(cfg: RunConfig, resume: str | None = None) -> ClassificationTrainer:
    # `label_names` (a TrainingArguments key) names the classes in id order for this stage; the Trainer itself must
    # then look for the labels under their usual key
    class_names = cfg.training.label_names
    args = trainer_arguments(cfg, label_names=["labels"])
    check_trackers(cfg.training)
    from transformers import set_seed

    set_seed(args.seed)
    tokenizer = setup_tokenizer(cfg, resume)
    with first_process_prepares(args, cfg.data, "encoding cls data"):
        data = build_classification_data(cfg.data, tokenizer, args.seed, cfg.finetuning.problem_type, class_names)
    model = build_model(cfg.model, tokenizer, classifier=classifier_head(data))
    model = apply_finetuning_type(model, cfg.finetuning, 0, cfg.model.adapter_name_or_path)
    set_precision(model, cfg)
    threshold = cfg.finetuning.threshold

    def metrics(prediction) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return classification_metrics(data.problem_type, logits, prediction.label_ids, threshold)

    model_columns = [c for c in ("input_ids", "token_type_ids", "labels") if c in data.train.column_names]
    trainer = ClassificationTrainer(
        model=model, args=args, train_dataset=data.train.select_columns(model_columns),
        eval_dataset=data.eval.select_columns(model_columns) if data.eval is not None else None,
        processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=metrics, class_weights=_weights(cfg, data), loraplus_lr_ratio=cfg.finetuning.loraplus_lr_ratio,
        optimizer_settings=cfg.finetuning, resilience=cfg.resilience, save_dtype=cfg.finetuning.save_dtype,
        callbacks=[JsonlLogCallback(args.output_dir), *tracking_callbacks(cfg.training, cfg.tracking)])
    trainer.cls_data = data
    return trainer


def write_predictions(trainer: ClassificationTrainer, cfg: RunConfig) -> dict:
    """The held-out rows' predictions (`eval_predictions.jsonl`: label, predicted, probabilities), a per-class
    report and the confusion matrix (JSON and PNG) for single-label runs."""
    data: ClassificationData = trainer.cls_data
    if data.eval is None or not trainer.is_world_process_zero():
        return {}
    output = trainer.predict(trainer.eval_dataset)
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    rows = classifier_predictions(logits, data.problem_type, data.label_names, cfg.finetuning.threshold)
    for row, label in zip(rows, output.label_ids.tolist(), strict=True):
        row["label"] = _named(label, data.problem_type, data.label_names)
    write_jsonl(os.path.join(cfg.training.output_dir, PREDICTIONS_FILE), rows)
    if data.problem_type != "single_label_classification":
        return {}
    from sklearn.metrics import classification_report, confusion_matrix

    ids = list(range(len(data.label_names)))
    predicted = np.asarray(logits).argmax(-1)
    report = classification_report(output.label_ids, predicted, labels=ids, target_names=data.label_names,
                                   output_dict=True, zero_division=0)
    matrix = confusion_matrix(output.label_ids, predicted, labels=ids)
    write_json(os.path.join(cfg.training.output_dir, "classification_report.json"),
               {"report": report, "confusion_matrix": matrix.tolist(), "labels": data.label_names})
    plot_confusion(matrix, data.label_names, os.path.join(cfg.training.output_dir, "confusion_matrix.png"))
    return {}


def _named(label: Any, problem_type: str, names: list[str]) -> Any:
    if problem_type == REGRESSION:
        return float(label[0] if isinstance(label, list) else label)
    if problem_type == MULTI:
        return [names[i] for i, v in enumerate(label) if v >= 0.5]
    return names[int(label)]


def plot_confusion(matrix: Any, names: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.5 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, str(int(matrix[i][j])), ha="center", va="center")
    ax.set_title("Confusion matrix (held-out rows)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def before_training(cfg: RunConfig, trainer: Any) -> None:
    """The head's settings beside the weights (an adapter's base lacks them)."""
    if trainer.is_world_process_zero():
        os.makedirs(cfg.training.output_dir, exist_ok=True)
        write_json(os.path.join(cfg.training.output_dir, CLS_HEAD_FILE),
                   {**classifier_head(trainer.cls_data), "threshold": cfg.finetuning.threshold})


def after_evaluation(cfg: RunConfig, built: Any, trainer: Any) -> dict:
    return write_predictions(trainer, cfg)
