"""Shared fixtures: tiny tokenizers and models built on the fly (chat models among them: a random one and one
fine-tuned to answer a greeting), real data from ../shared/data, isolated caches."""

from __future__ import annotations

import copy
import json
import os
import pathlib

import pytest

# Tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (the README's suite command runs two workers, one per core of CI), each worker and the processes
# its tests start compute on one thread: torch's default of a thread per core in every worker would oversubscribe the
# cores (and for the tiny test models one thread is faster anyway).
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
LF_DEMO = SHARED_DATA / "llamafactory_demo"
QUICKSTART = REPO / "src" / "lmforge" / "resources" / "quickstart_corpus.jsonl"

TINY_MODEL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 64, "max_position_embeddings": 256}


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own lmforge cache, so cache hits are only those the test creates."""
    cache = tmp_path / "lmforge-cache"
    monkeypatch.setenv("LMFORGE_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def quickstart_texts() -> list[str]:
    with open(QUICKSTART, encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh]


@pytest.fixture(scope="session")
def tiny_tokenizer(quickstart_texts):
    from lmforge.model.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(quickstart_texts[:500], 384, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> str:
    """A tiny random Qwen2 model + tokenizer saved as a plain HF directory."""
    import torch

    from lmforge.config.model import ModelArguments
    from lmforge.model.build import build_model

    path = tmp_path_factory.mktemp("tiny-qwen2")
    torch.manual_seed(0)  # the same weights whichever test builds it first (tests may run in any subset or order)
    model = build_model(ModelArguments(from_scratch=True, model_type="qwen2", config_overrides=TINY_MODEL),
                        tiny_tokenizer)
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


def write_jsonl(path: pathlib.Path, records: list) -> pathlib.Path:
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def scratch_args(output_dir, **extra) -> list[str]:
    """Command-line overrides for a tiny from-scratch pt run on a slice of the quickstart corpus."""
    args = {
        "stage": "pt", "from_scratch": True, "model_type": "qwen2", "train_tokenizer": True,
        "tokenizer_vocab_size": 384, "dataset": "lmforge_quickstart", "max_samples": 400, "cutoff_len": 64,
        "output_dir": str(output_dir), "per_device_train_batch_size": 8, "learning_rate": 1e-2,
        "max_steps": 20, "logging_steps": 5, "save_steps": 10, "report_to": "none", "disable_tqdm": True,
        "dataloader_num_workers": 0, "seed": 7,
    }
    args.update(extra)
    out = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in args.items()]
    out += [f"config_overrides.{k}={v}" for k, v in TINY_MODEL.items()]
    return out


# ---- chat models, for serving and export -------------------------------------------------------------------------

GREETING, REPLY = "Say hello.", "Hello from lmforge!"


def _chat_model(path, tokenizer, weight_std: float | None) -> str:
    import torch

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
    from lmforge.cli import main

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


# ---- vision-language models (tests/multimodal_models.py) -----------------------------------------------------------

@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory, quickstart_texts) -> str:
    from tests.multimodal_models import build_llava

    return build_llava(str(tmp_path_factory.mktemp("tiny-llava")), quickstart_texts[:500])


@pytest.fixture(scope="session")
def gemma3_dir(tmp_path_factory, quickstart_texts) -> str:
    from tests.multimodal_models import build_gemma3

    return build_gemma3(str(tmp_path_factory.mktemp("tiny-gemma3")), quickstart_texts[:500])


@pytest.fixture(scope="session")
def llava_next_dir(tmp_path_factory, quickstart_texts) -> str:
    from tests.multimodal_models import build_llava_next

    return build_llava_next(str(tmp_path_factory.mktemp("tiny-llava-next")), quickstart_texts[:500])


from tests.real_models import family_run, real_model  # noqa: E402, F401 - the tiny real-family models
