"""`do_predict` for SFT: answer every held-out prompt, score the answers against the references, write both."""

from __future__ import annotations

import json
import logging
import os

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lmforge.config.schema import RunConfig
from lmforge.data.encode import prepare_messages
from lmforge.data.template import prompt_ids
from lmforge.jsonl import write_json, write_jsonl
from lmforge.model.inference import generation_stop_ids, predict_and_score

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "generated_predictions.jsonl"
RESULTS_FILE = "predict_results.json"


def prediction_prompts(examples: Dataset, tokenizer: PreTrainedTokenizerBase,
                       enable_thinking: bool) -> tuple[list[list[int]], list[str]]:
    """(prompt ids, reference answer) per example: the conversation up to its last assistant turn."""
    ids, references = [], []
    for conversation in examples["conversation"]:
        example = json.loads(conversation)
        messages = prepare_messages(example["messages"], tokenizer.chat_template or "", enable_thinking)
        ids.append(prompt_ids(tokenizer, messages[:-1], example.get("tools"), enable_thinking=enable_thinking))
        references.append(example["messages"][-1]["content"])
    return ids, references


def predict(cfg: RunConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Dataset,
            write: bool = True) -> dict:
    """Generate for every example; write generated_predictions.jsonl and predict_results.json to output_dir (unless
    `write` is false: a process that only takes part in a split model's generation)."""
    ids, references = prediction_prompts(examples, tokenizer, cfg.data.enable_thinking)
    predictions, scores = predict_and_score(model, tokenizer, ids, references, cfg.generation,
                                            generation_stop_ids(tokenizer, model),
                                            cfg.training.per_device_eval_batch_size, cfg.training.seed)
    out = cfg.training.output_dir
    scores = {f"predict_{k}": v for k, v in scores.items()}
    if write:
        write_jsonl(os.path.join(out, PREDICTIONS_FILE), predictions)
        write_json(os.path.join(out, RESULTS_FILE), scores)
    return scores
