"""Load a saved model for inference (eval, chat, serving): a model directory, or a base plus a LoRA adapter."""

from __future__ import annotations

import logging
import os

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lmforge.config.model import ModelArguments
from lmforge.data.chat_templates import TemplateError, apply_template_choice
from lmforge.errors import ConfigError
from lmforge.model.build import build_model
from lmforge.model.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def inference_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_inference_tokenizer(args: ModelArguments, template: str | None = None) -> tuple[PreTrainedTokenizerBase, int]:
    """The model's tokenizer (the adapter's own where it saved one), with `template` applied where set. Returns
    the tokenizer and how many tokens the template added."""
    path = args.tokenizer_name_or_path or args.model_name_or_path
    if not args.tokenizer_name_or_path and args.adapter_name_or_path and \
            os.path.isfile(os.path.join(args.adapter_name_or_path, "tokenizer_config.json")):
        path = args.adapter_name_or_path  # lmforge saves the tokenizer (and its chat template) with the adapter
    tokenizer = load_tokenizer(path, args.trust_remote_code, args.model_revision, args.cache_dir)
    added = 0
    if template is not None:
        try:
            added = apply_template_choice(tokenizer, template)
        except TemplateError as err:
            raise ConfigError(f"Config error: {err}.") from None
    return tokenizer, added


def load_inference_model(args: ModelArguments, tokenizer: PreTrainedTokenizerBase,
                         device: torch.device | None = None, dtype: torch.dtype | str | None = None
                         ) -> PreTrainedModel:
    """The causal LM in `infer_dtype` (or `dtype`) on the inference device (or `device`), in eval mode; a LoRA
    adapter is merged in."""
    model = build_model(args, tokenizer, dtype=dtype or DTYPES[args.infer_dtype])
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
