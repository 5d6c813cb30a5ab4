"""The stored TrainingArguments field list (read without importing transformers) against the installed class."""

from __future__ import annotations

import dataclasses
import json
import typing

from transformers import TrainingArguments

from lmforge.config import trainer_fields
from lmforge.config.parse import build_config
from lmforge.config.schema import GROUPS, key_index


def _fields(cls: type) -> dict[str, tuple]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.init and not f.name.startswith("_"):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            out[f.name] = (trainer_fields._json_default(default), trainer_fields._type_spec(hints[f.name], {}),
                           f.metadata.get("help", ""))
    return out


def test_the_stored_mirror_is_the_installed_transformers_fields():
    """Written by `python -m lmforge.config.trainer_fields`; another transformers release is read from the class."""
    with open(trainer_fields.MIRROR, encoding="utf-8") as fh:
        mirror = json.load(fh)
    installed = trainer_fields.describe(TrainingArguments)
    if mirror["transformers"] == installed["transformers"]:
        assert mirror == installed, "regenerate it: python -m lmforge.config.trainer_fields"
    # whichever way they were read, the config keys are the installed class's fields, types, defaults and help
    assert _fields(GROUPS["training"]) == _fields(TrainingArguments)
    assert {k for k, key in key_index().items() if key.group == "training"} == set(_fields(TrainingArguments))


def test_another_transformers_release_is_read_from_the_class_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path))
    monkeypatch.setattr(trainer_fields, "installed_version", lambda: "99.0.0")
    monkeypatch.setattr(trainer_fields, "describe",
                        lambda cls, real=trainer_fields.describe: {**real(cls), "transformers": "99.0.0"})
    trainer_fields.training_fields.cache_clear()
    try:
        fields = trainer_fields.training_fields()
        cached = tmp_path / "trainer_fields" / "transformers-99.0.0.json"
        assert cached.is_file() and _fields(fields) == _fields(TrainingArguments)
        # the next process reads the cache: the class is not asked again
        monkeypatch.setattr(trainer_fields, "describe", lambda cls: (_ for _ in ()).throw(AssertionError("read")))
        trainer_fields.training_fields.cache_clear()
        assert _fields(trainer_fields.training_fields()) == _fields(TrainingArguments)
    finally:
        trainer_fields.training_fields.cache_clear()


def test_a_run_gets_the_real_training_arguments_and_the_data_commands_the_checked_values(tmp_path):
    raw = {"stage": "pt", "from_scratch": True, "model_type": "qwen2", "train_tokenizer": True,
           "dataset": "corpus.txt", "output_dir": str(tmp_path), "eval_strategy": "no", "lr_scheduler_type": "cosine",
           "learning_rate": "3e-4", "report_to": "none"}
    run = build_config(raw)
    assert isinstance(run.training, TrainingArguments)
    assert run.training.learning_rate == 3e-4 and run.training.lr_scheduler_type == "cosine"
    values = build_config(raw, trainer=False).training
    assert not isinstance(values, TrainingArguments) and type(values).__name__ == "TrainingFields"
    assert (values.learning_rate, values.lr_scheduler_type, values.seed) == (3e-4, "cosine", 42)
