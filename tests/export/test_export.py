"""`lmforge export`: merged weights equal base + adapter, shards and dtype as asked, GGUF files that read back with
the expected tensors and metadata, an Ollama template that renders like the chat template."""

from __future__ import annotations

import copy
import json
import os

import gguf
import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmforge.cli import main
from lmforge.config.model import ModelArguments
from lmforge.data.chat_templates import apply_template_choice
from lmforge.data.template import render
from lmforge.export.modelfile import role_pieces
from lmforge.model.build import build_model
from tests.conftest import REPO, TINY_MODEL
from tests.eval.test_mc import run_lmforge

pytestmark = pytest.mark.slow  # training runs, servers, browsers: `pytest -m "not slow"` skips them


def test_merged_export_equals_base_plus_adapter(tmp_path, greeter_base_dir, greeter_adapter_dir):
    from peft import PeftModel

    out = tmp_path / "merged"
    assert main(["export", greeter_adapter_dir, f"export_dir={out}", "export_size=0.0001"]) == 0
    files = sorted(os.listdir(out))
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 1
    assert "chat_template.jinja" in files or "chat_template" in json.load(open(out / "tokenizer_config.json"))
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]  # nothing left from staging

    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(greeter_base_dir),
                                          greeter_adapter_dir).eval()
    base = AutoModelForCausalLM.from_pretrained(greeter_base_dir).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tok(render(tok, [{"role": "user", "content": "Say hello."}], add_generation_prompt=True),
                            add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        got, want, before = merged(ids).logits, reference(ids).logits, base(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert (want - before).abs().max() > 1e-2  # the adapter matters, so equality above means it was merged
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in merged.generation_config.eos_token_id  # plain generate stops at the end of turn


def test_export_saves_the_dtype_asked_for_and_refuses_a_used_directory(tmp_path, greeter_dir):
    out = tmp_path / "bf16"
    assert main(["export", greeter_dir, f"export_dir={out}", "infer_dtype=bfloat16"]) == 0
    with safe_open(out / "model.safetensors", "pt") as fh:
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.bfloat16}
    again = run_lmforge("export", greeter_dir, f"export_dir={out}")
    assert again.returncode == 2 and "is not empty" in again.stderr and "Traceback" not in again.stderr
    assert main(["export", greeter_dir, f"export_dir={out}", "overwrite_export=true"]) == 0
    with safe_open(out / "model.safetensors", "pt") as fh:
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.float32}  # as the checkpoint was saved


def test_export_never_writes_over_its_source_or_a_foreign_directory(tmp_path, greeter_dir):
    before = sorted(os.listdir(greeter_dir))
    # the model's own directory, one inside it, one containing it
    for target in (greeter_dir, os.path.join(greeter_dir, "exported"), os.path.dirname(greeter_dir)):
        assert main(["export", greeter_dir, f"export_dir={target}", "overwrite_export=true"]) == 2
    assert sorted(os.listdir(greeter_dir)) == before
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    again = run_lmforge("export", greeter_dir, f"export_dir={foreign}", "overwrite_export=true")
    assert again.returncode == 2 and "was not written by `lmforge export`" in again.stderr
    assert (foreign / "notes.txt").read_text() == "keep"


def read_gguf(path) -> tuple[dict, dict]:
    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: t for t in reader.tensors}
    return fields, tensors


def dequantized(tensor) -> np.ndarray:
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return np.asarray(values, dtype=np.float32).reshape([int(d) for d in reversed(tensor.shape)])


@pytest.mark.parametrize("outtype", ["f32", "q8_0"])
def test_gguf_of_a_qwen2_model(tmp_path, greeter_dir, outtype):
    out = tmp_path / "gguf"
    assert main(["export", greeter_dir, f"export_dir={out}", "export_gguf=true", f"gguf_outtype={outtype}"]) == 0
    fields, tensors = read_gguf(out / f"gguf-{outtype}.gguf")
    model = AutoModelForCausalLM.from_pretrained(greeter_dir)
    tok = AutoTokenizer.from_pretrained(greeter_dir)
    c = model.config
    assert fields["general.architecture"] == "qwen2"
    assert (fields["qwen2.block_count"], fields["qwen2.embedding_length"], fields["qwen2.feed_forward_length"],
            fields["qwen2.attention.head_count"], fields["qwen2.attention.head_count_kv"],
            fields["qwen2.context_length"]) == (c.num_hidden_layers, c.hidden_size, c.intermediate_size,
                                                c.num_attention_heads, c.num_key_value_heads,
                                                c.max_position_embeddings)
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert len(fields["tokenizer.ggml.tokens"]) == c.vocab_size
    assert fields["tokenizer.ggml.tokens"][:len(tok)] == tok.convert_ids_to_tokens(list(range(len(tok))))
    assert fields["tokenizer.ggml.eot_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
    assert fields["tokenizer.chat_template"] == tok.chat_template
    assert len(fields["tokenizer.ggml.merges"]) > 0

    layer = {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"}
    expected = {"token_embd.weight", "output_norm.weight"} | {f"blk.{i}.{n}.weight" for i in range(2) for n in layer}
    expected |= {f"blk.{i}.attn_{n}.bias" for i in range(2) for n in "qkv"}
    expected |= set() if c.tie_word_embeddings else {"output.weight"}
    assert set(tensors) == expected
    state = model.state_dict()
    pairs = {"token_embd.weight": "model.embed_tokens.weight", "blk.1.attn_q.weight":
             "model.layers.1.self_attn.q_proj.weight", "blk.0.attn_k.bias": "model.layers.0.self_attn.k_proj.bias",
             "blk.1.ffn_down.weight": "model.layers.1.mlp.down_proj.weight",
             "output_norm.weight": "model.norm.weight"}
    for gguf_name, hf_name in pairs.items():
        got, want = dequantized(tensors[gguf_name]), state[hf_name].numpy()
        assert got.shape == want.shape, gguf_name
        if outtype == "f32" or want.ndim == 1:
            np.testing.assert_array_equal(got, want)
        else:  # 8-bit blocks: within the step of each block's scale
            assert tensors[gguf_name].tensor_type == gguf.GGMLQuantizationType.Q8_0
            np.testing.assert_allclose(got, want, atol=np.abs(want).max() / 100)

    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./gguf-{outtype}.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in modelfile


def test_gguf_of_a_llama_model_with_a_vocabulary_llama_cpp_does_not_know(tmp_path, tiny_tokenizer):
    """A tokenizer trained by the user (the tests' byte-level BPE): llama.cpp's converter names pre-tokenizers by a
    hash of published checkpoints' tokens and refuses it; the export names it by its split rule, and llama.cpp runs
    the file as transformers runs the model (Llama's q/k rows permuted for GGML's rope, the vocabulary carried)."""
    from llama_cpp import Llama

    src = tmp_path / "llama"
    tok = copy.deepcopy(tiny_tokenizer)
    apply_template_choice(tok, "llama3")
    torch.manual_seed(0)
    model = build_model(ModelArguments(from_scratch=True, model_type="llama", config_overrides=TINY_MODEL), tok)
    model.save_pretrained(src)
    tok.save_pretrained(src)
    out = tmp_path / "llama-gguf"
    assert main(["export", str(src), f"export_dir={out}", "export_gguf=true", "gguf_outtype=f32"]) == 0
    llm = Llama(str(out / "llama-gguf-f32.gguf"), n_ctx=64, verbose=False)
    assert llm.metadata["general.architecture"] == "llama"
    assert llm.metadata["tokenizer.ggml.pre"] == "gpt-2"
    text = "hello world, the quick brown fox"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert llm.tokenize(text.encode(), add_bos=False) == ids
    expected = model.eval().generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)[0, len(ids):]
    stream = llm.generate(ids, temp=0.0, top_k=1, reset=True)
    assert [next(stream) for _ in range(6)] == expected.tolist()


def test_gguf_refuses_architectures_llama_cpp_does_not_convert(tmp_path, tiny_tokenizer):
    src = tmp_path / "opt"
    model = build_model(ModelArguments(from_scratch=True, model_type="opt", config_overrides={
        "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "ffn_dim": 64,
        "word_embed_proj_dim": 32}), tiny_tokenizer)
    model.save_pretrained(src)
    tiny_tokenizer.save_pretrained(src)
    result = run_lmforge("export", str(src), f"export_dir={tmp_path / 'out'}", "export_gguf=true")
    assert result.returncode == 2, result.stderr
    assert "has no GGUF architecture for 'OPTForCausalLM'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # nothing half-written


CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c"}],
]


@pytest.mark.parametrize("template", ["chatml", "llama3", "default", str(REPO / "tests/data/templates/qwen3.jinja")])
def test_the_ollama_template_renders_like_the_chat_template(tiny_tokenizer, template):
    tok = copy.deepcopy(tiny_tokenizer)
    apply_template_choice(tok, template)
    pieces = role_pieces(tok)
    for messages in CONVERSATIONS:
        assert pieces.render(messages) == render(tok, messages, add_generation_prompt=True), messages


def _modelfile_template(text: str) -> str:
    start = text.index('TEMPLATE """') + len('TEMPLATE """')
    return text[start:text.index('"""', start)]


def test_the_modelfile_on_disk_renders_every_turn_like_the_chat_template(tmp_path, greeter_dir):
    """The TEMPLATE written to disk, executed by Go's own text/template (as Ollama runs it) and by the tests' Python
    subset of it, gives the chat template's rendering for system, user and assistant turns and the generation
    prompt; the stop tokens are the template's end of turn."""
    from tests.export.go_template import execute
    from tests.export.ollama_go import execute_go

    out = tmp_path / "ollama"
    assert main(["export", greeter_dir, f"export_dir={out}", "export_gguf=true", "gguf_outtype=f16"]) == 0
    text = (out / "Modelfile").read_text()
    tok = AutoTokenizer.from_pretrained(greeter_dir)
    template = _modelfile_template(text)
    for messages in [*CONVERSATIONS, [{"role": "user", "content": "Use {{ braces }} literally"}]]:
        expected = render(tok, messages, add_generation_prompt=True)
        assert execute_go(template, messages) == expected, messages
        assert execute(template, messages) == expected, messages
    stops = [line.split('"')[1] for line in text.splitlines() if line.startswith("PARAMETER stop ")]
    assert stops == ([tok.eos_token, "<|im_end|>"] if tok.eos_token != "<|im_end|>" else ["<|im_end|>"])


GGUF_FAMILIES = ["llama-3.2-instruct", "qwen2.5-instruct", "qwen3"]  # the chat templates (Qwen3-MoE's is Qwen3's)


@pytest.mark.slow
@pytest.mark.parametrize("family", GGUF_FAMILIES)
def test_each_familys_modelfile_renders_its_own_chat_template_in_go(family, real_model, tmp_path):
    """The real families' own chat templates (Llama 3.2's dated system prompt, Qwen2.5's default system prompt,
    Qwen3's), turned into an Ollama TEMPLATE by the export and executed by Go's text/template: the same text as the
    chat template for every conversation, and the family's end-of-turn token among the stops."""
    from tests.export.ollama_go import execute_go

    model_dir = real_model(family)
    out = tmp_path / "ollama"
    assert main(["export", model_dir, f"export_dir={out}", "export_gguf=true", "gguf_outtype=f16"]) == 0
    text = (out / "Modelfile").read_text()
    tok = AutoTokenizer.from_pretrained(model_dir)
    template = _modelfile_template(text)
    for messages in CONVERSATIONS:
        assert execute_go(template, messages) == render(tok, messages, add_generation_prompt=True), messages
    stops = [line.split('"')[1] for line in text.splitlines() if line.startswith("PARAMETER stop ")]
    assert {"llama-3.2-instruct": "<|eot_id|>"}.get(family, "<|im_end|>") in stops, stops
