"""The stage registry is the one list of stages: every surface that depends on the stage reads it, so a stage added
through `register_stage` appears in help, usage, validation, the web UI, plots, preview, bench and the runner."""

from __future__ import annotations

import json

import pytest

from lmforge.cli import main
from lmforge.config.stages import STAGES, StageSpec, register_stage
from tests.train.test_sft import sft_args

BUILT_IN = ("pt", "sft", "rm", "prm", "dpo", "kto", "ppo", "grpo", "online_dpo", "kd", "cls")


@pytest.fixture()
def toy_stage():
    spec = register_stage(StageSpec("toy", "a toy copy of sft", "sft", "tests.train.toy_stage", ("toy_metric",)))
    try:
        yield spec
    finally:
        del STAGES["toy"]


def test_the_built_in_stages_are_registered_once():
    assert tuple(STAGES) == BUILT_IN
    from lmforge.train import stage_runner

    assert all(callable(stage_runner(name)) for name in BUILT_IN)


@pytest.mark.slow
def test_a_registered_stage_appears_on_every_surface(toy_stage, tiny_model_dir, tmp_path, capsys):
    from lmforge.config.docs import render_reference
    from lmforge.serve.webui.train_tab import TRAIN_FORM, form_choices
    from lmforge.train import stage_trainer_builder
    from lmforge.train.runtime.plots import stage_curves

    main([])
    assert "toy" in next(line for line in capsys.readouterr().out.splitlines() if "lmforge train CONFIG" in line)
    assert "`toy` (a toy copy of sft)" in render_reference(schema="train")
    assert "'toy'" in render_reference(markdown=True)
    assert form_choices("stage", TRAIN_FORM["stage"][1]) == [*BUILT_IN, "toy"]
    assert stage_curves("toy") == ("loss", "eval_loss", "toy_metric", "eval_toy_metric")
    assert stage_trainer_builder("toy") is not None
    # preview/dump and training read the stage's example kind and recipe from the registry
    dump = tmp_path / "dump.jsonl"
    base = sft_args(tiny_model_dir, tmp_path / "preview", stage="toy", max_samples=4)
    assert main(["data", "dump", *base, "--output", str(dump)]) == 0
    assert len(dump.read_text().splitlines()) == 4 and "labels" in json.loads(dump.read_text().splitlines()[0])
    out = tmp_path / "toy"
    assert main(["train", *sft_args(tiny_model_dir, out, stage="toy", max_steps=2, save_steps=2)]) == 0
    assert (out / "model.safetensors").exists()


def test_unknown_stages_and_keys_of_other_stages_are_errors_from_the_registry(tiny_model_dir, tmp_path, capsys):
    assert main(["train", *sft_args(tiny_model_dir, tmp_path / "x", stage="stf")]) == 2
    err = capsys.readouterr().err
    assert "'stage' must be one of pt, sft, rm, prm, dpo, kto, ppo, grpo, online_dpo" in err
    assert "Did you mean 'sft'?" in err
    assert main(["train", *sft_args(tiny_model_dir, tmp_path / "y", pref_beta=0.2)]) == 2
    assert "'pref_beta' does not apply to 'stage: sft' (it applies to dpo, kto, online_dpo)" in capsys.readouterr().err


@pytest.mark.slow
def test_building_a_trainer_leaves_the_validated_config_as_it_was(tiny_model_dir, tmp_path):
    """What a run derives for its Trainer (SwanLab taken out of transformers' report_to, the class names of `cls`
    replaced by the labels' key) goes to the Trainer's own copy of the arguments; the validated config stays the one
    the run checked and saves."""
    import dataclasses

    from transformers import TrainingArguments

    from lmforge.config import load_config
    from lmforge.train.stages import cls, sft

    def fields(args) -> dict:
        return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingArguments)}

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"text": f"row {i}", "label": ["a", "b"][i % 2], "instruction": f"Say {i}",
                                        "output": str(i)}) + "\n" for i in range(8)))
    common = [f"model_name_or_path={tiny_model_dir}", "max_steps=1", "report_to=none", "cutoff_len=32"]
    runs = {sft: ["stage=sft", "template=chatml", f"dataset={data}", f"output_dir={tmp_path / 'sft'}",
                  "report_to=[tensorboard,swanlab]", "swanlab_mode=disabled"],
            cls: ["stage=cls", f"dataset={data}", "label_names=[b,a]", f"output_dir={tmp_path / 'cls'}"]}
    for recipe, extra in runs.items():
        cfg = load_config(None, common + extra)
        before = fields(cfg.training)
        built = recipe.build_trainer(cfg, None)
        trainer = getattr(built, "trainer", built)
        assert fields(cfg.training) == before and trainer.args is not cfg.training
        if recipe is cls:
            assert cfg.training.label_names == ["b", "a"] and trainer.args.label_names == ["labels"]
        else:
            assert "swanlab" in cfg.training.report_to and "swanlab" not in trainer.args.report_to
