"""Fixtures shared by the data tests: a chatml tokenizer and data arguments over LLaMA-Factory's demo datasets."""

from __future__ import annotations

import copy

import pytest

from lmforge.config.data import DataArguments
from lmforge.data.chat_templates import apply_template_choice
from tests.conftest import LF_DEMO


@pytest.fixture(scope="session")
def chat_tok(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    apply_template_choice(tok, "chatml")
    return tok


def data_args(**kw) -> DataArguments:
    return DataArguments(**{"dataset_dir": str(LF_DEMO), "cutoff_len": 4096, "max_samples": 40, **kw})
