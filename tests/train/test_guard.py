"""The non-finite guard: NaN steps are skipped (weights untouched) and counted; too many in a row stop the run with a
clear message and a checkpoint from before the problem."""

import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

import lmforge.train.stages.pt as pt
from lmforge.cli import main
from lmforge.runlog import read_log
from tests.conftest import scratch_args

pytestmark = pytest.mark.slow  # training runs, servers, browsers: `pytest -m "not slow"` skips them


class PoisonSteps(TrainerCallback):
    """Makes the model's loss NaN during the given (1-based) optimizer steps, and snapshots the weights after each
    step."""

    def __init__(self, steps: set[int]) -> None:
        self.steps, self.current, self.weights = steps, 0, {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = model

        def poison(module, inputs, output):
            if self.current in self.steps:
                output.loss = output.loss * float("nan")
            return output

        model.register_forward_hook(poison)

    def on_step_begin(self, args, state, control, **kwargs):
        self.current = state.global_step + 1

    def on_step_end(self, args, state, control, **kwargs):
        self.weights[state.global_step] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}


def run_with_poison(monkeypatch, out, steps: set[int], **extra) -> tuple[int, PoisonSteps]:
    poison = PoisonSteps(steps)
    monkeypatch.setattr(pt, "tracking_callbacks", lambda args, tracking: [poison])
    code = main(["train", *scratch_args(out, logging_steps=1, save_strategy="no", **extra)])
    return code, poison


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_nonfinite_steps_are_skipped_and_counted(monkeypatch, tmp_path):
    code, poison = run_with_poison(monkeypatch, tmp_path / "run", {3, 4}, max_steps=8)
    assert code == 0
    w = poison.weights
    assert not same(w[1], w[2])                     # normal steps train
    assert same(w[2], w[3]) and same(w[3], w[4])    # poisoned steps change nothing
    assert not same(w[4], w[5])                     # and training goes on afterwards
    log = [r for r in read_log(str(tmp_path / "run")) if "loss" in r]
    assert [r["step"] for r in log] == list(range(1, 9))
    assert [r.get("nonfinite_steps", 0) for r in log] == [0, 0, 1, 2, 2, 2, 2, 2]
    assert all(math.isfinite(r["loss"]) for r in log)


def test_too_many_nonfinite_steps_in_a_row_stop_with_a_checkpoint_from_before(monkeypatch, tmp_path, capsys):
    out = tmp_path / "run"
    code, poison = run_with_poison(monkeypatch, out, set(range(4, 100)), max_steps=20, max_nonfinite_steps=3)
    assert code == 1
    err = capsys.readouterr().err
    assert "3 steps in a row had a non-finite (NaN/inf) loss or gradient (max_nonfinite_steps=3)" in err
    assert "checkpoint-6 holds the weights and optimizer state from step 3" in err
    assert "Traceback" not in err
    saved = load_file(str(out / "checkpoint-6" / "model.safetensors"))
    after_step_3 = poison.weights[3]
    for name, tensor in saved.items():
        assert torch.equal(tensor, after_step_3[name]), name
    assert not (out / "model.safetensors").exists()


def test_the_guard_can_be_turned_off(monkeypatch, tmp_path):
    code, poison = run_with_poison(monkeypatch, tmp_path / "run", {2}, max_steps=3, skip_nonfinite_steps=False)
    assert code == 0
    assert any(torch.isnan(v).any() for v in poison.weights[2].values())


@pytest.mark.parametrize("value", [0, -1])
def test_max_nonfinite_steps_must_be_positive(tmp_path, capsys, value):
    assert main(["train", *scratch_args(tmp_path / "x", max_nonfinite_steps=value)]) == 2
    assert "'max_nonfinite_steps' must be at least 1" in capsys.readouterr().err


def test_the_private_trainer_methods_lmforge_overrides_still_exist():
    """A transformers release that renames one of these would silently bypass atomic checkpoints: fail here instead."""
    import inspect

    from transformers import Trainer

    from lmforge.train.runtime.resilience import PRIVATE_TRAINER_METHODS

    for name in PRIVATE_TRAINER_METHODS:
        assert callable(getattr(Trainer, name, None)), (
            f"transformers.Trainer.{name} no longer exists: lmforge's atomic checkpoints "
            "(train/runtime/resilience.py) override it; port the override to the new method")
    assert list(inspect.signature(Trainer._save_checkpoint).parameters)[:3] == ["self", "model", "trial"]
    assert list(inspect.signature(Trainer._save).parameters)[:3] == ["self", "output_dir", "state_dict"]
