"""`rope_scaling` on the real families' configs (no weights): an unscaled model (Qwen3) starts yarn from its own
context and rope base; a model already scaled the same way (Llama 3.2's llama3, GPT-OSS's yarn) multiplies its
factor and keeps its original context, so the positions it learned keep their encoding; another rope type is a
config error unless the user names the original context."""

from __future__ import annotations

import pytest
from transformers import AutoConfig

from lmforge.config.model import ModelArguments
from lmforge.errors import ConfigError
from lmforge.model.build import with_context
from tests.real_models import FAMILIES


def _extended(family: str, **scaling) -> tuple[dict, int]:
    if family not in FAMILIES:
        pytest.skip(f"{family} is not among the real families")
    source = str(FAMILIES[family].source)
    config = with_context(AutoConfig.from_pretrained(source),
                          ModelArguments(model_name_or_path=source, rope_scaling=scaling)).get_text_config()
    return config.rope_parameters, config.max_position_embeddings


def test_an_unscaled_model_starts_from_its_own_context_and_base():
    rope, context = _extended("qwen3", rope_type="yarn", factor=4.0)
    assert rope == {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 40960,
                    "rope_theta": 1000000}
    assert context == 4 * 40960


@pytest.mark.parametrize("family, rope_type, before, expected", [
    ("llama-3.2-instruct", "llama3", 131072, {"factor": 128.0, "original_max_position_embeddings": 8192,
                                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                              "rope_theta": 500000.0}),
    ("gpt-oss-20b", "yarn", 131072, {"factor": 128.0, "original_max_position_embeddings": 4096,
                                     "beta_fast": 32.0, "beta_slow": 1.0, "rope_theta": 150000}),
])
def test_a_model_scaled_the_same_way_multiplies_its_factor_and_keeps_its_original_context(family, rope_type,
                                                                                         before, expected):
    rope, context = _extended(family, rope_type=rope_type, factor=4.0)
    assert context == 4 * before
    assert {k: rope[k] for k in expected} == expected and rope["rope_type"] == rope_type


def test_another_rope_type_than_the_checkpoints_is_refused_unless_the_original_context_is_named():
    with pytest.raises(ConfigError, match=r"'llama' is already scaled with llama3 \(factor 32.0 from 8192 tokens\); "
                                          r"yarn would re-encode every position it learned. Extend it with "
                                          r"`rope_type: llama3`"):
        _extended("llama-3.2-instruct", rope_type="yarn", factor=4.0)
    rope, _ = _extended("llama-3.2-instruct", rope_type="yarn", factor=64.0, original_max_position_embeddings=8192)
    assert (rope["rope_type"], rope["factor"], rope["original_max_position_embeddings"]) == ("yarn", 64.0, 8192)
    assert "low_freq_factor" not in rope  # the llama3 scheme is gone, as asked
