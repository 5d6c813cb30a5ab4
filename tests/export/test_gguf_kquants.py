"""GGUF k-quants through llama.cpp (llama-cpp-python): a tiny Qwen3 of the real config and tokenizer, made 256 wide so
that llama.cpp's 256-weight k-quant blocks divide its rows, exported as f16 and as q4_k_m. llama.cpp loads both; the
f16 file gives transformers' greedy tokens; q4_k_m holds Q4_K (and llama.cpp's Q6_K choices) and its perplexity on
held-out text stays near the f16 file's."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from lmforge.cli import main
from tests.conftest import LF_DEMO

pytestmark = pytest.mark.slow

WIDE = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 64}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    if importlib_missing("llama_cpp") and not os.environ.get("CI"):
        pytest.skip("llama-cpp-python is not installed (the dev extra builds it)")
    from lmforge.bench.families import build_tiny
    from tests.real_models import FAMILIES

    if "qwen3" not in FAMILIES:
        pytest.skip("the real Qwen3 files are not here")
    root = tmp_path_factory.mktemp("gguf-kquants")
    model = build_tiny(FAMILIES["qwen3"].source, root / "model", sizes=WIDE)
    files = {}
    for outtype in ("f16", "q4_k_m"):
        out = root / outtype
        assert main(["export", model, f"export_dir={out}", "export_gguf=true", f"gguf_outtype={outtype}"]) == 0
        files[outtype] = str(out / f"{outtype}-{outtype}.gguf")
    return model, files


def importlib_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


def _llama(path: str):
    from llama_cpp import Llama

    return Llama(path, n_ctx=256, logits_all=True, verbose=False, seed=0)


def test_llama_cpp_gives_transformers_greedy_tokens_from_the_f16_file(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, files = exported
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    llm = _llama(files["f16"])
    for prompt in ("The capital of France is", "def fibonacci(n):", "你好，世界"):
        ids = tokenizer(prompt)["input_ids"]
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids  # the tokenizer carried over
        expected = reference.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):]
        stream = llm.generate(ids, temp=0.0, top_k=1, reset=True)
        assert [next(stream) for _ in range(8)] == expected.tolist(), prompt


def _perplexity(path: str, texts: list[list[int]]) -> float:
    llm = _llama(path)
    losses = []
    for ids in texts:
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[: len(ids) - 1], dtype=np.float64)
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        losses.append(-logp[np.arange(len(ids) - 1), ids[1:]].mean())
    return math.exp(float(np.mean(losses)))


def test_q4_k_m_is_k_quantized_and_keeps_the_f16_perplexity(exported):
    from gguf import GGMLQuantizationType, GGUFReader
    from transformers import AutoTokenizer

    model_dir, files = exported
    types = {t.name: t.tensor_type for t in GGUFReader(files["q4_k_m"]).tensors}
    assert types["blk.0.ffn_gate.weight"] == GGMLQuantizationType.Q4_K
    assert types["blk.0.attn_q.weight"] == GGMLQuantizationType.Q4_K
    assert GGMLQuantizationType.Q6_K in types.values()  # llama.cpp's q4_k_m keeps some tensors at 6 bits
    assert os.path.getsize(files["q4_k_m"]) < 0.4 * os.path.getsize(files["f16"])

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    records = json.loads((LF_DEMO / "alpaca_en_demo.json").read_text())[-8:]
    texts = [tokenizer(r["output"])["input_ids"][:64] for r in records]
    f16, q4 = _perplexity(files["f16"], texts), _perplexity(files["q4_k_m"], texts)
    assert abs(q4 / f16 - 1) < 0.05, (f16, q4)
