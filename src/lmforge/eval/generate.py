"""Generation tasks: answer each prompt of a dataset (batched, greedy or sampled) and score the answers against the
references with exact match, ROUGE-1/2/L and BLEU-4 (jieba words for Chinese).

Prompts come through the same pipeline as training data (every format, the chat template, `cutoff_len`, skips
counted): the conversation up to its last assistant turn is the prompt, that turn (or alpaca `output`) the
reference.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lmforge.config.schema import EvalConfig
from lmforge.data.examples import build_examples
from lmforge.data.template import stop_token_ids
from lmforge.model.inference import predict_and_score

logger = logging.getLogger(__name__)


def evaluate_generation(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                        cfg: EvalConfig) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(results, predictions): scores in percent over the prompts that have a reference."""
    data = build_examples(cfg.data, tokenizer, cfg.eval.seed, kind="prompt")
    rows = data.train
    references = [json.loads(c).get("reference") for c in rows["conversation"]]
    predictions, scores = predict_and_score(model, tokenizer, [list(ids) for ids in rows["input_ids"]], references,
                                            cfg.generation, stop_token_ids(tokenizer), cfg.eval.batch_size,
                                            cfg.eval.seed, progress=True)
    scored = sum(r is not None for r in references)
    if not scored:
        logger.warning("No prompt has a reference answer: nothing to score, only the predictions are written")
    results: dict[str, Any] = {"unit": "percent", "prompts": len(predictions), "scored": scored,
                               "skipped": {name: s.get("skipped", 0) for name, s in data.stats.items()}, **scores}
    return results, predictions
