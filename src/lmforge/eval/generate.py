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

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lmforge.config.schema import EvalConfig
from lmforge.data.examples import build_examples
from lmforge.data.multimodal import MultimodalCollator, per_token_outputs
from lmforge.model import multimodal
from lmforge.model.inference import generation_stop_ids, predict_and_score
from lmforge.model.moe import no_router_outputs

logger = logging.getLogger(__name__)


def evaluate_generation(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                        cfg: EvalConfig) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(results, predictions): scores in percent over the prompts that have a reference."""
    processor = multimodal.load_processor(cfg.model) if multimodal.is_multimodal(cfg.model) else None
    if processor is not None:  # the template the run chose (`template`) renders the prompts
        processor.tokenizer.chat_template = tokenizer.chat_template
    data = build_examples(cfg.data, tokenizer, cfg.eval.seed, kind="prompt", processor=processor)
    rows = data.train
    references = [json.loads(c).get("reference") for c in rows["conversation"]]
    prompts = [list(ids) for ids in rows["input_ids"]]
    if processor is not None:
        predictions, scores = predict_with_images(model, processor, rows, references, cfg)
    else:
        predictions, scores = predict_and_score(model, tokenizer, prompts, references, cfg.generation,
                                                generation_stop_ids(tokenizer, model), cfg.eval.batch_size,
                                                cfg.eval.seed, progress=True)
    scored = sum(r is not None for r in references)
    if not scored:
        logger.warning("No prompt has a reference answer: nothing to score, only the predictions are written")
    results: dict[str, Any] = {"unit": "percent", "prompts": len(predictions), "scored": scored,
                               "skipped": {name: s.get("skipped", 0) for name, s in data.stats.items()}, **scores}
    return results, predictions


@torch.no_grad()
def predict_with_images(model: PreTrainedModel, processor: Any, rows: Any, references: list[str | None],
                        cfg: EvalConfig) -> tuple[list[dict], dict[str, float]]:
    """A vision-language model's answers, one prompt at a time with its images (pixel inputs as the processor makes
    them), greedy or sampled as `generation` says; scored like the text path."""
    from lmforge.data.examples import media_options
    from lmforge.metrics import text_scores

    tokenizer = processor.tokenizer
    extras = tuple(per_token_outputs(processor))
    collate = MultimodalCollator(lambda f: {}, processor, media_options(cfg.data), ())
    gen, stops = cfg.generation, generation_stop_ids(tokenizer, model)
    sampling = {"temperature": gen.temperature, "top_p": gen.top_p, "top_k": gen.top_k} if gen.do_sample else {}
    torch.manual_seed(cfg.eval.seed)
    predictions = []
    for row, reference in zip(tqdm(rows, desc="generate", unit="prompt"), references, strict=True):
        inputs = {"input_ids": torch.tensor([row["input_ids"]], device=model.device)}
        inputs.update({k: torch.tensor([row[k]], device=model.device) for k in extras})
        if row["images"]:
            pixels = collate.pixel_inputs([[collate.media_options.image(ref) for ref in row["images"]]])
            inputs.update({k: v.to(model.device, model.dtype) if v.is_floating_point() else v.to(model.device)
                           for k, v in pixels.items()})
        out = model.generate(**inputs, **no_router_outputs(model), max_new_tokens=gen.max_new_tokens,
                             do_sample=gen.do_sample,
                             repetition_penalty=gen.repetition_penalty, eos_token_id=stops,
                             pad_token_id=tokenizer.pad_token_id, **sampling)
        predictions.append({"prompt": tokenizer.decode(row["input_ids"], skip_special_tokens=False),
                            "predict": tokenizer.decode(out[0, len(row["input_ids"]):], skip_special_tokens=True),
                            "label": reference, "images": row["images"]})
    scored = [p for p in predictions if p["label"] is not None]
    return predictions, text_scores([p["predict"] for p in scored], [p["label"] for p in scored]) if scored else {}
