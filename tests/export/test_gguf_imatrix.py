"""`gguf_imatrix: true`: llama.cpp's quantizer guided by an importance matrix computed from the user's data.

On a 256-wide tiny Qwen3 of the real config and tokenizer: the matrix holds, for each weight matrix, the mean
square of its inputs per column over the data's tokens (checked against the layer's input recomputed by hand), under
llama.cpp's tensor names; llama.cpp uses it (the q4_k_m tensors differ from a quantization without it, and their
error weighted by the matrix is smaller, which is what the matrix asks of the quantizer); the file runs in llama.cpp.
The data comes from `dataset` or from the exported run's lmforge_config.yaml."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch
import yaml

from lmforge.cli import main
from tests.conftest import LF_DEMO
from tests.eval.test_mc import run_lmforge
from tests.real_models import FAMILIES

pytestmark = pytest.mark.slow

WIDE = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 64}
DATA = ["dataset=alpaca_en_demo", f"dataset_dir={LF_DEMO}", "cutoff_len=64", "export_quantization_samples=16"]


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    if importlib.util.find_spec("llama_cpp") is None and not os.environ.get("CI"):
        pytest.skip("llama-cpp-python is not installed (the dev extra builds it)")
    if "qwen3" not in FAMILIES:
        pytest.skip("the real Qwen3 files are not here")
    from lmforge.bench.families import build_tiny

    return build_tiny(FAMILIES["qwen3"].source, tmp_path_factory.mktemp("imatrix") / "model", sizes=WIDE)


def _export(model: str, out, *extra: str) -> str:
    assert main(["export", model, f"export_dir={out}", "export_gguf=true", "gguf_outtype=q4_k_m", *extra]) == 0
    return str(out / f"{out.name}-q4_k_m.gguf")


def test_the_importance_matrix_is_the_mean_squared_input_of_each_column(qwen3, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.config.parse import load_target_config
    from lmforge.export.calibration import calibration_tokens
    from lmforge.export.gguf_convert import tensor_names
    from lmforge.export.gguf_imatrix import importance_matrix

    cfg = load_target_config("export", qwen3, [f"export_dir={tmp_path / 'x'}", "export_gguf=true",
                                               "gguf_outtype=q4_k_m", "gguf_imatrix=true", *DATA])
    tokenizer = AutoTokenizer.from_pretrained(qwen3)
    sequences = calibration_tokens(cfg, tokenizer)
    assert len(sequences) == 16 and max(map(len, sequences)) <= 64
    # the examples as the template renders them for training: the chat markup is in them
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") in sequences[0]
    model = AutoModelForCausalLM.from_pretrained(qwen3, dtype=torch.float32).eval()
    matrix = importance_matrix(model, sequences, tensor_names(qwen3))
    layer = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}
    assert set(matrix) == {f"blk.{i}.{n}.weight" for i in range(2) for n in layer}  # not the output layer

    # attn_q's input is layer 0's input norm of the embeddings: its mean square per column, over every token
    with torch.no_grad():
        inputs = torch.cat([model.model.layers[0].input_layernorm(model.model.embed_tokens(torch.tensor([s])))[0]
                            for s in sequences]).double()
    np.testing.assert_allclose(matrix["blk.0.attn_q.weight"], inputs.square().mean(0).numpy(), rtol=1e-5)
    assert matrix["blk.1.ffn_down.weight"].shape == (WIDE["intermediate_size"],)


def test_llama_cpp_quantizes_with_it_and_keeps_the_weighted_error_lower(qwen3, tmp_path):
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from llama_cpp import Llama
    from safetensors.torch import load_file

    plain = _export(qwen3, tmp_path / "plain")
    guided = _export(qwen3, tmp_path / "guided", "gguf_imatrix=true", *DATA)

    weights = load_file(os.path.join(qwen3, "model.safetensors"))
    importance_of = _matrix(qwen3, tmp_path)
    tensors = {path: {t.name: t for t in GGUFReader(path).tensors} for path in (plain, guided)}
    changed = 0
    for gguf_name, hf_name in [("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
                               ("blk.1.ffn_up.weight", "model.layers.1.mlp.up_proj.weight"),
                               ("blk.1.attn_output.weight", "model.layers.1.self_attn.o_proj.weight")]:
        want = weights[hf_name].float().numpy()
        importance = importance_of[gguf_name]
        errors = []
        for path in (plain, guided):
            t = tensors[path][gguf_name]
            got = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(want.shape)
            errors.append(float(((got - want) ** 2 * importance).sum()))
        changed += errors[0] != errors[1]
        assert errors[1] < errors[0], (gguf_name, errors)
    assert changed == 3
    llm = Llama(guided, n_ctx=32, verbose=False)
    assert llm.metadata["general.file_type"] == "15"  # Q4_K_M


def _matrix(model_dir: str, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.config.parse import load_target_config
    from lmforge.export.calibration import calibration_tokens
    from lmforge.export.gguf_convert import tensor_names
    from lmforge.export.gguf_imatrix import importance_matrix

    cfg = load_target_config("export", model_dir, [f"export_dir={tmp_path / 'm'}", "export_gguf=true",
                                                   "gguf_outtype=q4_k_m", "gguf_imatrix=true", *DATA])
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    return importance_matrix(model, calibration_tokens(cfg, AutoTokenizer.from_pretrained(model_dir)),
                             tensor_names(model_dir))


def test_the_data_defaults_to_the_runs_training_data(tmp_path, real_model):
    """An exported run names its training data in its lmforge_config.yaml; without it, or for a type llama.cpp's
    quantizer does not write, `gguf_imatrix` is a config error that says what to do."""
    from lmforge.config.parse import load_target_config
    from lmforge.export.calibration import calibration_data

    model_dir = real_model("qwen3")
    run = tmp_path / "run"
    run.mkdir()
    for name in os.listdir(model_dir):
        os.symlink(os.path.join(model_dir, name), run / name)
    args = [f"export_dir={tmp_path / 'x'}", "export_gguf=true", "gguf_outtype=q4_k_m", "gguf_imatrix=true"]
    missing = run_lmforge("export", str(run), *args)
    assert missing.returncode == 2 and "'gguf_imatrix' is calibrated on your data" in \
        missing.stderr and "Traceback" not in missing.stderr
    (run / "lmforge_config.yaml").write_text(yaml.safe_dump({
        "model": {"model_name_or_path": "somewhere"}, "stage": "sft",
        "data": {"dataset": "alpaca_en_demo", "dataset_dir": str(LF_DEMO), "cutoff_len": 96}}))
    data, stage = calibration_data(load_target_config("export", str(run), args))
    assert (data.dataset, data.dataset_dir, data.cutoff_len, stage) == ("alpaca_en_demo", str(LF_DEMO), 96, "sft")
    wrong = run_lmforge("export", str(run), *args[:2], "gguf_outtype=f16", "gguf_imatrix=true")
    assert wrong.returncode == 2 and "needs export_gguf: true and a gguf_outtype it quantizes" in wrong.stderr
