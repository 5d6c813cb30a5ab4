"""Checkpoints saved quantized, as users download them (GPTQ, AWQ, compressed-tensors from llm-compressor), as the
base of a run: compressed-tensors' W4A16 checkpoint (written here with the compressed-tensors package, as
llm-compressor saves one: int4 weights packed in int32, a bf16 scale per group) loads decompressed and trains; a
GPTQ or AWQ checkpoint whose package is missing, trained fully, or quantized again is a config error before any
data work."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from lmforge.cli import main
from lmforge.runlog import read_log
from tests.conftest import LF_DEMO

GROUP = 16  # weights per scale (the tiny model's layers are 32 wide; llm-compressor's W4A16 preset takes 128)


def write_w4a16_checkpoint(model_dir: str, out: str) -> None:
    """`model_dir` saved as llm-compressor's W4A16 scheme saves a model: every linear layer but the output one in
    symmetric int4, a scale per group of GROUP weights from the group's range, packed ("pack-quantized")."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        QuantizationStatus,
        apply_quantization_config,
    )
    from compressed_tensors.quantization.utils import calculate_qparams
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    weights = QuantizationArgs(num_bits=4, type="int", symmetric=True, group_size=GROUP, strategy="group")
    apply_quantization_config(model, QuantizationConfig(
        config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}, ignore=["lm_head"],
        quantization_status=QuantizationStatus.INITIALIZED))
    for module in model.modules():
        if getattr(module, "quantization_scheme", None) is None:
            continue
        groups = module.weight.data.float().reshape(module.weight.shape[0], -1, GROUP)
        scale, zero_point = calculate_qparams(groups.amin(-1), groups.amax(-1), weights)
        module.weight_scale.data.copy_(scale.reshape(module.weight_scale.shape))
        module.weight_zero_point.data.copy_(zero_point.reshape(module.weight_zero_point.shape))
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    compressor.compress_model(model)
    model.save_pretrained(out)
    compressor.update_config(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)


def _args(model_dir, out, **extra) -> list[str]:
    values = {"stage": "sft", "model_name_or_path": model_dir, "template": "chatml", "dataset": "alpaca_en_demo",
              "dataset_dir": str(LF_DEMO), "max_samples": 16, "cutoff_len": 64, "output_dir": str(out),
              "max_steps": 8, "learning_rate": 2e-2, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
              "disable_tqdm": True, **extra}
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()]


@pytest.mark.slow
def test_lora_over_a_compressed_tensors_w4a16_checkpoint(real_model, tmp_path, capsys):
    """The packed int4 base loads decompressed (peft has no LoRA layer over packed weights): each group of its
    linear weights holds at most 16 values, the original weights rounded to their group's scale; LoRA over it lowers
    the loss; full fine-tuning of it saves a plain model."""
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM, AutoTokenizer, CompressedTensorsConfig

    from lmforge.config.model import ModelArguments
    from lmforge.model.build import build_model

    original = real_model("qwen3")
    base = str(tmp_path / "w4a16")
    write_w4a16_checkpoint(original, base)
    assert "model.layers.0.mlp.up_proj.weight_packed" in load_file(f"{base}/model.safetensors")

    assert main(["train", *_args(base, tmp_path / "lora", finetuning_type="lora", lora_target="all")]) == 0
    err = capsys.readouterr().err
    assert "(saved quantized: compressed-tensors; decompressed as it loaded" in err
    losses = [r["loss"] for r in read_log(str(tmp_path / "lora")) if "loss" in r]
    assert losses[-1] < losses[0] - 0.1, losses

    assert main(["train", *_args(base, tmp_path / "full", finetuning_type="full", max_steps=1)]) == 0
    config = json.loads((tmp_path / "full" / "config.json").read_text())
    assert "quantization_config" not in config
    plain = AutoModelForCausalLM.from_pretrained(original, dtype=torch.float32)
    loaded = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32,
                                                  quantization_config=CompressedTensorsConfig(dequantize=True))
    weight, rounded = (m.model.layers[0].mlp.up_proj.weight.detach() for m in (plain, loaded))
    groups, original_groups = rounded.reshape(-1, GROUP), weight.reshape(-1, GROUP)
    assert max(len(torch.unique(g)) for g in groups) <= 16
    scale = original_groups.abs().amax(-1, keepdim=True) / 7.5  # symmetric int4 over the group's range
    assert ((groups - original_groups).abs() <= scale / 2 + 1e-2).all()
    assert not torch.equal(groups, original_groups)
    built = build_model(ModelArguments(model_name_or_path=base), AutoTokenizer.from_pretrained(base),
                        dtype=torch.float32)
    torch.testing.assert_close(built.model.layers[0].mlp.up_proj.weight.detach(), rounded)  # what lmforge trains


FAKE_CHECKPOINTS = {
    "gptq": {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True},
    "awq": {"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm", "zero_point": True},
}


@pytest.fixture
def saved_quantized(real_model, tmp_path):
    """The tiny real Qwen3 (its published config and tokenizer) with a GPTQ or AWQ `quantization_config` in its
    config.json, as those checkpoints carry it (the config is all these checks read)."""
    def make(method: str) -> str:
        path = tmp_path / f"qwen3-{method}"
        shutil.copytree(real_model("qwen3"), path)
        config = json.loads((path / "config.json").read_text())
        config["quantization_config"] = FAKE_CHECKPOINTS[method]
        (path / "config.json").write_text(json.dumps(config))
        return str(path)
    return make


@pytest.mark.parametrize("method, extra, message", [
    ("gptq", {"finetuning_type": "full"}, "is saved quantized (gptq): its packed weights train only through "
                                          "adapters: set 'finetuning_type: lora'"),
    ("awq", {"finetuning_type": "lora", "quantization_bit": 8, "quantization_method": "torchao"},
     "is saved quantized (awq): drop 'quantization_bit'"),
    ("awq", {"finetuning_type": "lora"}, "is saved quantized (awq): Loading an AWQ quantized model requires "
                                         "gptqmodel"),
    ("gptq", {"finetuning_type": "lora"}, "is saved quantized (gptq): Loading a GPTQ quantized model requires"),
])
def test_a_checkpoint_saved_quantized_that_cannot_train_is_a_config_error(method, extra, message, saved_quantized,
                                                                          tmp_path, capsys):
    import importlib.util

    if "requires" in message and any(importlib.util.find_spec(p) for p in ("gptqmodel", "optimum", "awq")):
        pytest.skip("a GPTQ/AWQ package is installed here")
    assert main(["train", *_args(saved_quantized(method), tmp_path / "x", **extra)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert "Encoding" not in err  # before any data work
