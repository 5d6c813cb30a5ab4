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
