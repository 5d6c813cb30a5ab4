"""Models to serve: a tiny random chat model with confident (large) weights, and one fine-tuned by `lmforge train`
to answer a greeting with a fixed reply and then end its turn."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from lmforge.cli import main
from tests.conftest import TINY_MODEL, write_jsonl

GREETING, REPLY = "Say hello.", "Hello from lmforge!"


def _chat_model(path, tokenizer, weight_std: float | None) -> str:
    from lmforge.config.model import ModelArguments
    from lmforge.data.chat_templates import apply_template_choice
    from lmforge.model.build import build_model

    tokenizer = copy.deepcopy(tokenizer)
    apply_template_choice(tokenizer, "chatml")
    torch.manual_seed(0)
    model = build_model(ModelArguments(from_scratch=True, model_type="qwen2", config_overrides=TINY_MODEL), tokenizer)
    if weight_std is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, weight_std)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory, tiny_tokenizer) -> str:
    """A random tiny Qwen2 with the chatml template. Weights are drawn wider than the init (std 0.3) so greedy
    choices have clear margins and outputs differ between prompts."""
    return _chat_model(tmp_path_factory.mktemp("tiny-chat"), tiny_tokenizer, 0.3)


def _train_greeter(base: str, root, **extra) -> str:
    data = write_jsonl(root / "greet.jsonl", [{"messages": [{"role": "user", "content": GREETING},
                                                            {"role": "assistant", "content": REPLY}]}] * 16)
    args = {"stage": "sft", "model_name_or_path": base, "dataset": str(data), "cutoff_len": 64,
            "output_dir": str(root / "out"), "per_device_train_batch_size": 8, "learning_rate": 1e-2,
            "max_steps": 200, "logging_steps": 50, "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
            "seed": 0, **extra}
    assert main(["train"] + [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in args.items()]) == 0
    return str(root / "out")


@pytest.fixture(scope="session")
def greeter_base_dir(tmp_path_factory, tiny_tokenizer) -> str:
    """A tiny random chatml model at its initial scale (the base the greeters are trained from)."""
    return _chat_model(tmp_path_factory.mktemp("greeter-base"), tiny_tokenizer, None)


@pytest.fixture(scope="session")
def greeter_dir(tmp_path_factory, greeter_base_dir) -> str:
    """The base fully fine-tuned by `lmforge train` on one exchange, GREETING -> REPLY, until it has learnt to
    answer with REPLY and end its turn with <|im_end|>."""
    return _train_greeter(greeter_base_dir, tmp_path_factory.mktemp("greeter"), finetuning_type="full")


@pytest.fixture(scope="session")
def greeter_adapter_dir(tmp_path_factory, greeter_base_dir) -> str:
    """A LoRA adapter (saved by `lmforge train`, with its tokenizer) trained briefly on the same exchange: its
    weights are far from zero, so merging it changes the model."""
    return _train_greeter(greeter_base_dir, tmp_path_factory.mktemp("greeter-lora"), finetuning_type="lora",
                          lora_rank=8, lora_target="all", max_steps=30)
