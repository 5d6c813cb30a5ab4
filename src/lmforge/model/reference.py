"""The frozen reference model of dpo/kto: what the policy's preference rewards are measured against."""

from __future__ import annotations

import copy
import logging

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from lmforge.config.schema import RunConfig
from lmforge.errors import ConfigError
from lmforge.model.precision import HALF, config_dtype

logger = logging.getLogger(__name__)


def reference_model(cfg: RunConfig, policy: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                    split: dict | None = None) -> torch.nn.Module | None:
    """`ref_model` when set; None under LoRA (the trainer switches the adapters off: no second copy); otherwise a
    frozen copy of the policy as the run starts (with a starting adapter merged into it). With `split` (a policy
    sharded as it loaded: `model.parallel.load_kwargs`) the reference loads sharded the same way."""
    f, m = cfg.finetuning, cfg.model
    if f.ref_model:
        try:
            ref = AutoModelForCausalLM.from_pretrained(f.ref_model, dtype="auto", trust_remote_code=m.trust_remote_code,
                                                       **(split or {}))
        except (OSError, ValueError) as err:
            raise ConfigError(f"Config error: could not load 'ref_model' from '{f.ref_model}': "
                              f"{str(err).splitlines()[0]}") from None
        if len(tokenizer) > ref.get_input_embeddings().num_embeddings:
            ref.resize_token_embeddings(len(tokenizer))
        logger.info("Reference model: %s", f.ref_model)
    elif f.finetuning_type == "lora" and not m.adapter_name_or_path:
        logger.info("Reference model: the policy with its LoRA adapters switched off")
        return None
    elif f.finetuning_type == "lora":
        ref = copy.deepcopy(policy).merge_and_unload()
        logger.info("Reference model: the base with the starting adapter %s merged in", m.adapter_name_or_path)
    elif split:  # a sharded model is loaded again, sharded, rather than copied
        from lmforge.model.build import build_model

        ref = build_model(m, tokenizer, split=split)
        logger.info("Reference model: the starting model, sharded as the policy is")
    else:
        ref = copy.deepcopy(policy)
        dtype = copy_dtype(cfg, policy)
        if dtype is not None:
            for param in ref.parameters():
                param.data = param.data.to(dtype)
        logger.info("Reference model: a frozen copy of the starting model")
    return ref.eval().requires_grad_(False)


def copy_dtype(cfg: RunConfig, policy: torch.nn.Module) -> torch.dtype | None:
    """The dtype of a frozen copy of the policy: the checkpoint's half precision under bf16/fp16 autocast (a copy of
    float32 master weights never trains, and autocast runs its matmuls in half precision all the same: half the
    memory), else None (each weight keeps the policy's dtype)."""
    dtype = config_dtype(policy)
    return dtype if (cfg.training.bf16 or cfg.training.fp16) and dtype in HALF else None
