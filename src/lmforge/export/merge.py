"""The model to export: base + adapter merged (in float32), then cast to the dtype it is saved in."""

from __future__ import annotations

import logging

import torch
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from lmforge.config.model import ModelArguments
from lmforge.data.template import stop_token_ids
from lmforge.model.inference import DTYPES, load_inference_model
from lmforge.model.tokenizer import load_inference_tokenizer

logger = logging.getLogger(__name__)


def saved_dtype(args: ModelArguments) -> torch.dtype:
    """`infer_dtype`, or for `auto` the dtype the base checkpoint was saved in."""
    if args.infer_dtype != "auto":
        return DTYPES[args.infer_dtype]
    config = AutoConfig.from_pretrained(args.model_name_or_path, trust_remote_code=args.trust_remote_code,
                                        revision=args.model_revision, cache_dir=args.cache_dir)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def merged_model(args: ModelArguments, template: str | None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Tokenizer (with `template` applied where set) and the model with its adapter merged, on the CPU."""
    tokenizer, _ = load_inference_tokenizer(args, template)
    target = saved_dtype(args)
    # a LoRA update is small next to the weights: adding it in bf16/fp16 would round much of it away
    model = load_inference_model(args, tokenizer, device=torch.device("cpu"),
                                 dtype=torch.float32 if args.adapter_name_or_path else target)
    model = model.to(target)
    if tokenizer.chat_template and model.can_generate():
        # plain `generate` (and vLLM, llama.cpp) stop where the chat template ends a turn, not only at EOS
        stops = stop_token_ids(tokenizer)
        model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
        if model.generation_config.pad_token_id is None and tokenizer.pad_token_id is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    logger.info("Exporting %s in %s", type(model).__name__, target)
    return model, tokenizer
