"""`lmforge export export_quantization=int8|int4|fp8`: a compressed-tensors checkpoint of the tiny real Qwen3 (the
format vLLM loads), whose config names the scheme, whose weights are stored packed (int) or in float8, which loads
back in transformers, and whose perplexity on held-out text stays near the unquantized model's."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from lmforge.cli import main
from tests.conftest import LF_DEMO

pytest.importorskip("compressed_tensors")

# export_quantization -> (the stored weight's name and dtype, how far the perplexity may move). Measured: int8
# 0.99994, int4 0.9984, fp8 0.9996 of the unquantized model's. The tiny model's weights are random (its perplexity is
# about its vocabulary size), so this shows the quantized weights compute the same model, not the quality a trained
# model keeps: that is measured on real weights by `lmforge eval task=perplexity` (docs/export.md).
METHODS = {"int8": ("weight_packed", torch.int32, 0.001), "int4": ("weight_packed", torch.int32, 0.01),
           "fp8": ("weight", torch.float8_e4m3fn, 0.005)}


def _perplexity(model, tokenizer) -> float:
    records = json.loads((LF_DEMO / "alpaca_en_demo.json").read_text())[-16:]  # held out of nothing trained here
    losses = []
    with torch.no_grad():
        for record in records:
            ids = torch.tensor([tokenizer(record["output"])["input_ids"][:64]])
            losses.append(model(input_ids=ids, labels=ids).loss.item())
    return math.exp(sum(losses) / len(losses))


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_a_quantized_export_is_a_compressed_tensors_checkpoint_that_loads_back(method, real_model, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stored, dtype, tolerance = METHODS[method]
    model_dir = real_model("qwen3")
    out = tmp_path / method
    assert main(["export", model_dir, f"export_dir={out}", f"export_quantization={method}",
                 "export_quantization_group_size=16"]) == 0
    assert f"export_quantization {method}: 14 linear layers" in capsys.readouterr().err  # 7 per layer, 2 layers
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors"
    assert config["ignore"] == ["lm_head"]
    weights = load_file(str(out / "model.safetensors"))
    assert weights[f"model.layers.0.mlp.up_proj.{stored}"].dtype == dtype
    assert weights["lm_head.weight"].dtype == torch.bfloat16  # the output layer as saved

    tokenizer = AutoTokenizer.from_pretrained(out)
    quantized = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    before, after = _perplexity(plain, tokenizer), _perplexity(quantized, tokenizer)
    assert abs(after / before - 1) < tolerance, (before, after)


def test_quantized_export_options_that_cannot_run_are_config_errors(tiny_model_dir, tmp_path, capsys):
    args = ["export", tiny_model_dir, f"export_dir={tmp_path / 'x'}", "export_quantization=fp8"]
    assert main([*args, "export_gguf=true"]) == 2
    assert "'export_quantization: fp8' and 'export_gguf' write two different quantized formats" in \
        capsys.readouterr().err
    assert main([*args, "export_quantization_group_size=0"]) == 2
    assert "'export_quantization_group_size' must be at least 1, got 0" in capsys.readouterr().err
