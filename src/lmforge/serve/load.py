"""Build the engine a serving command uses, from its config."""

from __future__ import annotations

import logging
import os

from lmforge.config.schema import ServeConfig
from lmforge.data.template import stop_token_ids
from lmforge.errors import ConfigError
from lmforge.model import multimodal
from lmforge.model.inference import generation_stop_ids, load_inference_model
from lmforge.model.tokenizer import load_inference_tokenizer, with_template

logger = logging.getLogger(__name__)


def served_name(cfg: ServeConfig) -> str:
    """The model id clients name: `served_model_name`, else the model directory's (or hub id's) last part."""
    if cfg.serve.served_model_name:
        return cfg.serve.served_model_name
    path = cfg.model.adapter_name_or_path or cfg.model.model_name_or_path or "model"
    return os.path.basename(os.path.normpath(path))


def load_engine(cfg: ServeConfig, need_chat_template: bool = True):
    """The tokenizer (with `template` applied where set) and model, inside the configured engine."""
    processor = multimodal.load_processor(cfg.model) if multimodal.is_multimodal(cfg.model) else None
    if processor is not None:
        tokenizer, _ = processor.tokenizer, with_template(processor.tokenizer, cfg.data.template)
        logger.info("Vision-language model: takes %s", ", ".join(multimodal.modalities(processor)))
    else:
        tokenizer, _ = load_inference_tokenizer(cfg.model, cfg.data.template)
    if need_chat_template and not tokenizer.chat_template:
        raise ConfigError(f"Config error ({cfg.source}): the tokenizer of '{cfg.model.model_name_or_path}' has no "
                          "chat template: set `template` (chatml, llama3, alpaca, default or a .jinja file).")
    if cfg.serve.infer_backend == "vllm":  # vLLM adds the generation config's EOS ids itself
        from lmforge.serve.vllm_engine import VllmEngine

        stop_ids = stop_token_ids(tokenizer)
        _log_stops(tokenizer, stop_ids)
        return VllmEngine(cfg, tokenizer, stop_ids)
    from lmforge.serve.engine import Engine

    model = load_inference_model(cfg.model, tokenizer)
    stop_ids = generation_stop_ids(tokenizer, model)
    _log_stops(tokenizer, stop_ids)
    return Engine(model, tokenizer, stop_ids, cfg.serve.max_batch_size, cfg.serve.max_model_len,
                  continuous=cfg.serve.continuous_batching, processor=processor)


def _log_stops(tokenizer, stop_ids: list[int]) -> None:
    logger.info("Generation stops at %s", ", ".join(repr(tokenizer.convert_ids_to_tokens(i)) for i in stop_ids))
