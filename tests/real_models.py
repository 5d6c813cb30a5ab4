"""Tiny random-weight models of real families, built from what users bring: the family's own tokenizer files, chat
template, generation config and config.json (../shared/data/real_models, see its MANIFEST.md), with only the sizes
shrunk (2 layers, hidden size 32, 4 experts) through transformers' own classes. The vocabulary, special tokens,
template, EOS ids and config quirks (tied embeddings, rope scaling, layer types, MoE routing) stay the family's.

A family that cannot be built here is skipped with the reason (the installed transformers lacks its architecture,
its tokenizer files are not in the folder)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

REAL_MODELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_models"  # (conftest imports this file)
CAUSAL = ("qwen2.5-instruct", "qwen3", "qwen3-moe", "llama-3.2-instruct", "gpt-oss-20b")
ENCODERS = ("bert-base-uncased", "roberta-base")

# the sizes every family shrinks to (keys a family's config lacks are not added)
SHRUNK = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
          "head_dim": 8, "intermediate_size": 64, "moe_intermediate_size": 16, "shared_expert_intermediate_size": 16,
          "num_experts": 4, "num_local_experts": 4, "num_experts_per_tok": 2, "max_window_layers": 2,
          "n_routed_experts": 4, "first_k_dense_replace": 1}


def _tokenizer(family: str):
    from transformers import AutoTokenizer, RobertaTokenizer

    source = REAL_MODELS / family
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        if (source / "vocab.json").is_file() and (source / "merges.txt").is_file():  # a 2019 RoBERTa folder
            return RobertaTokenizer.from_pretrained(source)
        pytest.skip(f"{family}: its tokenizer does not load here ({str(err).splitlines()[0][:120]})")


def _config(family: str):
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    source = REAL_MODELS / family
    raw = json.loads((source / "config.json").read_text())
    if "model_type" not in raw:  # a config from before `model_type`: named by its folder, as transformers once did
        known = [name for name in CONFIG_MAPPING if name in family]
        config = CONFIG_MAPPING[max(known, key=len)].from_pretrained(source)
    else:
        try:
            config = AutoConfig.from_pretrained(source)
        except (KeyError, ValueError) as err:
            pytest.skip(f"{family}: transformers {_version()} cannot read its config ({err})")
    text = config.get_text_config()
    text.update({k: v for k, v in SHRUNK.items() if hasattr(text, k)})
    if getattr(text, "layer_types", None):
        text.layer_types = list(text.layer_types)[: text.num_hidden_layers]
    if getattr(text, "mlp_only_layers", None):
        text.mlp_only_layers = []
    return config


def _version() -> str:
    import transformers

    return transformers.__version__


def build_tiny(family: str, dest: Path, head: str = "causal") -> str:
    """`dest` holds a tiny `family` model with the family's real tokenizer (and template, generation config):
    `head` "causal" (AutoModelForCausalLM) or "cls" (AutoModelForSequenceClassification, 2 labels)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    tokenizer, config = _tokenizer(family), _config(family)
    torch.manual_seed(0)
    if head == "cls":
        config.num_labels = 2
        model = AutoModelForSequenceClassification.from_config(config)
    else:
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    for name in ("generation_config.json", "chat_template.jinja"):
        if (REAL_MODELS / family / name).is_file():
            shutil.copy(REAL_MODELS / family / name, dest / name)
    return str(dest)


@pytest.fixture(scope="session")
def real_model(tmp_path_factory):
    """`real_model(family, head="causal")`: the directory of a tiny model of that family (built once per session)."""
    built: dict[tuple[str, str], str] = {}

    def get(family: str, head: str = "causal") -> str:
        if (family, head) not in built:
            built[family, head] = build_tiny(family, tmp_path_factory.mktemp(f"real-{family}-{head}"), head)
        return built[family, head]

    return get
