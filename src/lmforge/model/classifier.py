"""A saved sequence classifier in use (`lmforge predict`, `eval task=cls`, `api`'s /v1/classify): what it predicts
(problem type and class names, from its config) and its logits over encoded rows, batched."""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from transformers import DataCollatorWithPadding, PreTrainedModel, PreTrainedTokenizerBase

from lmforge.config.model import ModelArguments
from lmforge.model.build import CLS_HEAD_FILE


def classifier_arguments(path: str) -> ModelArguments:
    """A `stage: cls` output as model arguments: the directory itself, or (a LoRA output) its base plus the adapter
    (`load_inference_model` merges it and takes the head from the adapter's `cls_head.json`)."""
    config = os.path.join(path, "adapter_config.json")
    if not os.path.isfile(config):
        return ModelArguments(model_name_or_path=path)
    with open(config, encoding="utf-8") as fh:
        return ModelArguments(model_name_or_path=json.load(fh)["base_model_name_or_path"], adapter_name_or_path=path)


def head_of(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> tuple[str, list[str]]:
    """(problem type, class names in id order; none for regression). Gives the config a pad id (decoders score
    the last non-pad token)."""
    config = model.config
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    problem_type = config.problem_type or ("regression" if config.num_labels == 1 else "single_label_classification")
    names = [] if problem_type == "regression" else [config.id2label[i] for i in range(config.num_labels)]
    return problem_type, names


def threshold_of(path: str | None) -> float:
    """The multi-label decision threshold a classifier was trained with (0.5 where not recorded)."""
    head = os.path.join(path or "", CLS_HEAD_FILE)
    if not path or not os.path.isfile(head):
        return 0.5
    with open(head, encoding="utf-8") as fh:
        return float(json.load(fh).get("threshold", 0.5))


@torch.no_grad()
def classifier_logits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[dict[str, list[int]]],
                      batch_size: int, progress: bool = False) -> np.ndarray:
    """Logits [rows, labels] of encoded rows (input_ids, and token_type_ids where the tokenizer makes them)."""
    from tqdm.auto import tqdm

    collate, out = DataCollatorWithPadding(tokenizer), []
    for start in tqdm(range(0, len(rows), batch_size), desc="classify", unit="batch", disable=not progress):
        batch = collate(rows[start: start + batch_size])
        out.append(model(**{k: v.to(model.device) for k, v in batch.items()}).logits.float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.config.num_labels), dtype=np.float32)


def load_classifier(path: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A `stage: cls` output (a LoRA one merged onto its base) and its tokenizer, on the inference device."""
    from lmforge.model.inference import load_inference_model
    from lmforge.model.tokenizer import load_inference_tokenizer

    args = classifier_arguments(path)
    tokenizer, _ = load_inference_tokenizer(args)
    return load_inference_model(args, tokenizer), tokenizer
