"""Load a model with a scoring head saved by lmforge (a reward model, a process reward model) for inference: a full
model, or a LoRA adapter merged onto the base it names, with its tokenizer and a pad id for batching."""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from lmforge.errors import ConfigError


def load_scorer(path: str, auto_class: Any, peft_class: str, num_labels: int, what: str, dtype: Any = "auto"
                ) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """`auto_class.from_pretrained(path)`, or with an adapter peft's `peft_class` merged; a ConfigError naming
    `what` when it cannot load or has another number of outputs than `num_labels`."""
    from transformers import AutoTokenizer

    try:
        if os.path.isfile(os.path.join(path, "adapter_config.json")):
            import peft

            model = getattr(peft, peft_class).from_pretrained(path, num_labels=num_labels, dtype=dtype)
            model = model.merge_and_unload()
        else:
            model = auto_class.from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"Config error: could not load a {what} from '{path}': {str(err).splitlines()[0]}") from None
    if model.config.num_labels != num_labels:
        raise ConfigError(f"Config error: '{path}' has {model.config.num_labels} outputs; a {what} has "
                          f"{num_labels}.")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
            else tokenizer.eos_token_id
    return model.eval(), tokenizer
