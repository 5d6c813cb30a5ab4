"""Load a saved model for inference (eval, chat, serving): a model directory, or a base plus a LoRA adapter; and
generate completions of token-id prompts in batches (samples, prediction, eval)."""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lmforge.config.generation import GenerationArguments
from lmforge.config.model import ModelArguments
from lmforge.data.template import stop_token_ids
from lmforge.errors import ConfigError
from lmforge.model.build import build_model
from lmforge.model.moe import no_router_outputs

logger = logging.getLogger(__name__)

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def inference_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def generation_stop_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> list[int]:
    """Where a reply ends: EOS and the template's end of turn (`stop_token_ids`), then every EOS id of the
    checkpoint's generation config (Llama 3 lists <|end_of_text|>, <|eom_id|> and <|eot_id|>; GPT-OSS <|return|>,
    <|endoftext|> and <|call|>), as `model.generate` and vLLM stop at them."""
    ids = stop_token_ids(tokenizer)
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for token_id in configured if isinstance(configured, list) else [configured]:
        if isinstance(token_id, int) and 0 <= token_id < len(tokenizer) and token_id not in ids:
            ids.append(token_id)
    return ids


def load_inference_model(args: ModelArguments, tokenizer: PreTrainedTokenizerBase,
                         device: torch.device | None = None, dtype: torch.dtype | str | None = None
                         ) -> PreTrainedModel:
    """The causal LM in `infer_dtype` (or `dtype`) on the inference device (or `device`), in eval mode; a LoRA
    adapter is merged in."""
    model = build_model(args, tokenizer, dtype=dtype or DTYPES[args.infer_dtype], training=False)
    if args.adapter_name_or_path:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, args.adapter_name_or_path).merge_and_unload()
        except (OSError, ValueError) as err:
            raise ConfigError(f"Config error: could not load the adapter '{args.adapter_name_or_path}': "
                              f"{str(err).splitlines()[0]}") from None
        logger.info("Adapter %s merged into the model", args.adapter_name_or_path)
    model = model.to(device or inference_device()).eval()
    logger.info("Inference in %s on %s", model.dtype, model.device)
    return model


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]],
             gen: GenerationArguments, stop_ids: list[int] | None = None, batch_size: int = 8,
             seed: int = 42, progress: bool = False) -> list[str]:
    """Completions of token-id prompts, batched with left padding; decoding stops at any of `stop_ids`.
    Prompts are batched longest first (less padding); the completions come back in the prompts' order."""
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop = stop_ids or [tokenizer.eos_token_id]
    sampling = {"temperature": gen.temperature, "top_p": gen.top_p, "top_k": gen.top_k} if gen.do_sample else {}
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    completions: list[str] = [""] * len(prompts)
    for start in tqdm(range(0, len(prompts), batch_size), desc="generate", unit="batch", disable=not progress):
        indices = order[start: start + batch_size]
        batch = [prompts[i] for i in indices]
        width = max(len(p) for p in batch)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=model.device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=model.device)
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, **no_router_outputs(model),
                                max_new_tokens=gen.max_new_tokens, do_sample=gen.do_sample,
                                repetition_penalty=gen.repetition_penalty, pad_token_id=pad, eos_token_id=stop,
                                **sampling)
        for i, text in zip(indices, tokenizer.batch_decode(output[:, width:], skip_special_tokens=True), strict=True):
            completions[i] = text
    model.train(was_training)
    return completions


def predict_and_score(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]],
                      references: list[str | None], gen: GenerationArguments, stop_ids: list[int],
                      batch_size: int, seed: int, progress: bool = False) -> tuple[list[dict], dict[str, float]]:
    """The one prediction path (`do_predict` and `lmforge eval task=generate`): an answer per prompt, as
    `{"prompt", "predict", "label"}` records, and ROUGE/BLEU/exact match over the prompts that have a reference."""
    from lmforge.metrics import text_scores

    logger.info("Generating answers for %d prompts", len(prompts))
    answers = generate(model, tokenizer, prompts, gen, stop_ids, batch_size=batch_size, seed=seed, progress=progress)
    predictions = [{"prompt": tokenizer.decode(p, skip_special_tokens=False), "predict": a, "label": r}
                   for p, a, r in zip(prompts, answers, references, strict=True)]
    scored = [p for p in predictions if p["label"] is not None]
    scores = text_scores([p["predict"] for p in scored], [p["label"] for p in scored]) if scored else {}
    return predictions, scores
