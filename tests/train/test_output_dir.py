"""A run never clobbers another: a used output_dir is refused unless resumed or explicitly overwritten, and
overwriting removes only what lmforge wrote."""

import json
import os

import pytest

from lmforge.cli import main
from tests.conftest import scratch_args

pytestmark = pytest.mark.slow  # training runs, servers, browsers: `pytest -m "not slow"` skips them


def _snapshot(directory) -> dict[str, bytes]:
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, directory)] = fh.read()
    return out


def test_a_second_run_into_a_used_output_dir_is_refused_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *scratch_args(out, max_steps=4, save_steps=2)]) == 0
    before = _snapshot(out)
    assert "trainer_log.jsonl" in before and "checkpoint-4/trainer_state.json" in before
    capsys.readouterr()
    assert main(["train", *scratch_args(out, max_steps=2, save_steps=2, learning_rate=5e-3)]) == 2
    err = capsys.readouterr().err
    assert f"output_dir '{out}' already holds a run" in err
    assert "resume_from_checkpoint: true" in err and "overwrite_output_dir: true" in err
    assert "Traceback" not in err
    assert _snapshot(out) == before


def test_overwrite_output_dir_removes_only_what_lmforge_wrote(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *scratch_args(out, max_steps=4, save_steps=2)]) == 0
    (out / "notes.txt").write_text("mine")
    (out / "data").mkdir()
    (out / "data" / "keep.jsonl").write_text("{}\n")
    assert main(["train", *scratch_args(out, max_steps=2, save_steps=2, overwrite_output_dir=True)]) == 0
    assert sorted(p for p in os.listdir(out) if p.startswith("checkpoint-")) == ["checkpoint-2"]
    steps = [json.loads(line).get("step") for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert steps and max(s for s in steps if s is not None) == 2  # this run's log only (the first ran to step 4)
    assert (out / "notes.txt").read_text() == "mine" and (out / "data" / "keep.jsonl").exists()


def test_resuming_continues_the_run_in_place(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *scratch_args(out, max_steps=2, save_steps=2)]) == 0
    assert main(["train", *scratch_args(out, max_steps=4, save_steps=2, resume_from_checkpoint=True)]) == 0
    assert sorted(p for p in os.listdir(out) if p.startswith("checkpoint-")) == ["checkpoint-2", "checkpoint-4"]
