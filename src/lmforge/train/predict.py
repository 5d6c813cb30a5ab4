"""`do_predict` for SFT: answer every held-out prompt, score the answers against the references, write both."""

from __future__ import annotations

import json
import logging
import os

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lmforge.config.schema import RunConfig
from lmforge.data.encode import prepare_messages
from lmforge.data.template import prompt_ids, stop_token_ids
from lmforge.jsonl import write_json, write_jsonl
from lmforge.metrics import text_scores
from lmforge.model.inference import generate

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "generated_predictions.jsonl"
RESULTS_FILE = "predict_results.json"


def prediction_prompts(examples: Dataset, tokenizer: PreTrainedTokenizerBase,
                       enable_thinking: bool) -> tuple[list[list[int]], list[str], list[str]]:
    """(prompt ids, prompt text, reference answer) per example: the conversation up to its last assistant turn."""
    ids, texts, references = [], [], []
    for conversation in examples["conversation"]:
        example = json.loads(conversation)
        messages = prepare_messages(example["messages"], tokenizer.chat_template or "", enable_thinking)
        prompt = prompt_ids(tokenizer, messages[:-1], example.get("tools"), enable_thinking=enable_thinking)
        ids.append(prompt)
        texts.append(tokenizer.decode(prompt, skip_special_tokens=False))
        references.append(example["messages"][-1]["content"])
    return ids, texts, references


def predict(cfg: RunConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Dataset) -> dict:
    """Generate for every example; write generated_predictions.jsonl and predict_results.json to output_dir."""
    ids, texts, references = prediction_prompts(examples, tokenizer, cfg.data.enable_thinking)
    logger.info("Generating answers for %d prediction prompts", len(ids))
    answers = generate(model, tokenizer, ids, cfg.generation, stop_token_ids(tokenizer),
                       batch_size=cfg.training.per_device_eval_batch_size, seed=cfg.training.seed)
    out = cfg.training.output_dir
    write_jsonl(os.path.join(out, PREDICTIONS_FILE),
                [{"prompt": p, "predict": a, "label": r} for p, a, r in zip(texts, answers, references, strict=True)])
    scores = {f"predict_{k}": v for k, v in text_scores(answers, references).items()}
    write_json(os.path.join(out, RESULTS_FILE), scores)
    return scores
