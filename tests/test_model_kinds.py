"""What a checkpoint folder is taken for: a vision-language config with its processor files is a vision-language
model; the same config saved without any processor file (a text fine-tune, a config-and-tokenizer copy) is used as a
text model, with a warning that says so."""

from __future__ import annotations

import json
import logging

from transformers import Gemma3Config

from lmforge.config.model import ModelArguments
from lmforge.model import multimodal


def test_a_vision_language_config_without_processor_files_is_a_text_model(tmp_path, caplog):
    (tmp_path / "config.json").write_text(json.dumps(Gemma3Config().to_dict()))
    args = ModelArguments(model_name_or_path=str(tmp_path))
    assert multimodal.is_multimodal_config(multimodal.model_config(args))
    with caplog.at_level(logging.WARNING, logger="lmforge.model.multimodal"):
        assert not multimodal.is_multimodal(args)
    assert "saved without its processor" in caplog.text and str(tmp_path) in caplog.text
    (tmp_path / "preprocessor_config.json").write_text("{}")
    assert multimodal.is_multimodal(args)


def test_a_model_loaded_for_inference_takes_no_gradients_and_says_no_trainable_count(tiny_model_dir, tiny_tokenizer,
                                                                                      caplog):
    from lmforge.model.inference import load_inference_model

    with caplog.at_level(logging.INFO, logger="lmforge.model.build"):
        model = load_inference_model(ModelArguments(model_name_or_path=tiny_model_dir), tiny_tokenizer)
    assert not any(p.requires_grad for p in model.parameters())
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Model: ")]
    assert line.endswith(" parameters") and "trainable" not in line, line


def test_a_new_reward_head_gets_one_line_not_transformers_load_report(real_model, tmp_path, caplog, capfd):
    """The head a reward/classifier stage is about to train is missing from the causal LM's checkpoint by design:
    one lmforge line says so; a checkpoint that lacks a backbone weight still gets transformers' full report. On a
    tiny Qwen3 of the published config and tokenizer."""
    import shutil

    import safetensors.torch

    from lmforge.model.build import build_model
    from lmforge.model.tokenizer import load_tokenizer

    source = real_model("qwen3")
    tokenizer = load_tokenizer(source)
    with caplog.at_level(logging.INFO, logger="lmforge.model"):
        model = build_model(ModelArguments(model_name_or_path=source), tokenizer, reward_head=True)
    head = model.score.weight.numel()
    assert model.score.weight.shape == (1, model.config.hidden_size)
    assert (f"New head score ({head:,} parameters): initialised at random, trained by this stage (the checkpoint's "
            "lm_head is not used)") in caplog.text  # the causal LM's head, which a reward model does not have
    assert "LOAD REPORT" not in capfd.readouterr().err + caplog.text

    broken = shutil.copytree(source, tmp_path / "broken")
    weights = safetensors.torch.load_file(f"{broken}/model.safetensors")
    weights.pop("model.norm.weight")
    safetensors.torch.save_file(weights, f"{broken}/model.safetensors", metadata={"format": "pt"})
    caplog.clear()
    with caplog.at_level(logging.INFO):
        build_model(ModelArguments(model_name_or_path=str(broken)), tokenizer, reward_head=True)
    reported = capfd.readouterr().err + caplog.text
    assert "LOAD REPORT" in reported and "model.norm.weight" in reported and "New head" not in caplog.text
