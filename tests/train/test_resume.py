"""Never losing work: exact resume (pt and sft, packed or not, full and LoRA), checkpoints that survive SIGKILL at any
moment, graceful stop on SIGTERM/SIGINT, save_total_limit that keeps what a run needs."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from lmforge.cli import main
from lmforge.runlog import read_log
from lmforge.train.runtime.checkpoint import STAGING_DIR, list_checkpoints, resolve_resume, rotate
from tests.conftest import LF_DEMO, scratch_args

pytestmark = pytest.mark.slow  # training runs, servers, browsers: `pytest -m "not slow"` skips them


def losses(out) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_log(str(out)) if "loss" in r}


def assert_same_losses(resumed: dict[int, float], reference: dict[int, float], steps) -> None:
    for step in steps:
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step


def sft_args(model_dir: str, out, **extra) -> list[str]:
    args = {"stage": "sft", "model_name_or_path": model_dir, "template": "chatml", "dataset": "alpaca_en_demo",
            "dataset_dir": str(LF_DEMO), "max_samples": 200, "cutoff_len": 96, "output_dir": str(out),
            "per_device_train_batch_size": 4, "learning_rate": 5e-3, "max_steps": 12, "logging_steps": 1,
            "save_steps": 4, "report_to": "none", "disable_tqdm": True, "seed": 3, **extra}
    return [f"{k}={json.dumps(v) if not isinstance(v, (str)) else v}" for k, v in args.items()]


RUNS = {
    "pt": lambda model_dir, out: scratch_args(out, max_steps=12, save_steps=4, logging_steps=1),
    "pt-neat-packing": lambda model_dir, out: scratch_args(out, max_steps=12, save_steps=4, logging_steps=1,
                                                           neat_packing=True),
    "pt-streaming-accumulation": lambda model_dir, out: scratch_args(
        out, max_steps=12, save_steps=4, logging_steps=1, streaming=True, buffer_size=64,
        gradient_accumulation_steps=2),
    "sft": lambda model_dir, out: sft_args(model_dir, out),
    "sft-packing": lambda model_dir, out: sft_args(model_dir, out, packing=True),
    "sft-lora": lambda model_dir, out: sft_args(model_dir, out, finetuning_type="lora", lora_target="all",
                                                learning_rate=2e-2),
    "sft-lora-packing": lambda model_dir, out: sft_args(model_dir, out, finetuning_type="lora", packing=True,
                                                        learning_rate=2e-2),
}


@pytest.mark.parametrize("run", list(RUNS))
def test_resume_after_step_k_gives_the_same_losses_as_the_uninterrupted_run(run, tiny_model_dir, tmp_path, caplog):
    """A run stopped after step 4 holds exactly checkpoint-4 of the uninterrupted run; resuming it must reproduce
    steps 5..12 (data order, dropout RNG, LR schedule, optimizer state; a stream continues from its position)."""
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["train", *RUNS[run](tiny_model_dir, full)]) == 0
    os.makedirs(part)
    shutil.copytree(full / "checkpoint-4", part / "checkpoint-4")
    shutil.copy(full / "trainer_log.jsonl", part / "trainer_log.jsonl")
    with caplog.at_level("INFO", logger="lmforge"):
        assert main(["train", *RUNS[run](tiny_model_dir, part), "resume_from_checkpoint=true"]) == 0
    if "streaming" in run:  # 4 steps x 2 x 8 rows: the stream restarts at block 64, not from its beginning
        assert (part / "checkpoint-4" / "stream_state.json").is_file()
        assert "Stream resumed after 64 blocks" in caplog.text
    reference, resumed = losses(full), losses(part)
    assert sorted(resumed) == list(range(1, 13))
    assert_same_losses(resumed, reference, range(5, 13))
    if "lora" in run:
        assert os.path.isfile(part / "checkpoint-8" / "adapter_model.safetensors")


# ---- SIGKILL at random moments ---------------------------------------------------------------------------------------

def start_training(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lmforge", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_step(out, proc: subprocess.Popen, step: int = 1, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if any(r.get("step", 0) >= step for r in read_log(str(out))):  # a line cut mid-write is skipped
            return
        time.sleep(0.05)
    raise AssertionError("training did not reach its first logged step in time")


def assert_checkpoints_load(out) -> None:
    complete, _ = list_checkpoints(str(out))
    for path in complete:
        with open(os.path.join(path, "trainer_state.json")) as fh:
            assert json.load(fh)["global_step"] == int(path.rsplit("-", 1)[1])
        load_file(os.path.join(path, "model.safetensors"))
        assert os.path.isfile(os.path.join(path, "optimizer.pt"))


def test_sigkill_at_random_moments_then_resume_matches_an_uninterrupted_run(tmp_path):
    steps = 120  # enough for four kills early in the run; every step writes a checkpoint
    args = dict(max_steps=steps, save_steps=1, save_total_limit=2, logging_steps=1, max_samples=600)
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert main(["train", *scratch_args(full, **args)]) == 0

    rng = random.Random(1234)
    kills = 0
    for attempt in range(4):
        resume = ["resume_from_checkpoint=true"] if attempt else []
        proc = start_training([*scratch_args(killed, **args), *resume])
        wait_for_step(killed, proc, max([0, *losses(killed)]) + 1)
        time.sleep(rng.uniform(0.05, 1.0))  # somewhere in a step, a checkpoint write or a rotation
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.communicate()
        assert_checkpoints_load(killed)
    assert kills >= 3
    final = subprocess.run([sys.executable, "-m", "lmforge", "train", *scratch_args(killed, **args),
                            "resume_from_checkpoint=true"], capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    assert not os.path.exists(killed / STAGING_DIR)
    assert sorted(losses(killed)) == list(range(1, steps + 1))
    assert_same_losses(losses(killed), losses(full), range(1, steps + 1))


# ---- graceful stop ---------------------------------------------------------------------------------------------------

def test_sigterm_saves_a_resumable_checkpoint_and_exits_0(tmp_path):
    args = dict(max_steps=400, save_steps=1000, logging_steps=1, max_samples=600)
    out = tmp_path / "run"
    proc = start_training(scratch_args(out, **args))
    wait_for_step(out, proc, 3)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    complete, incomplete = list_checkpoints(str(out))
    assert len(complete) == 1 and not incomplete
    step = int(complete[0].rsplit("-", 1)[1])
    assert 3 <= step < 400
    assert f"Stopped by SIGTERM after step {step}" in stderr and "resume_from_checkpoint=true" in stderr
    assert not os.path.exists(out / "model.safetensors")  # the run is not finished: no final model pretends it is
    assert max(losses(out)) == step

    resumed = subprocess.run([sys.executable, "-m", "lmforge", "train",
                              *scratch_args(out, **{**args, "max_steps": step + 5}), "resume_from_checkpoint=true"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resuming from {complete[0]}" in resumed.stderr
    assert sorted(losses(out)) == list(range(1, step + 6))


SECOND_SIGNAL = """
import os, signal, time
from lmforge.train.runtime.signals import StopRequest
request = StopRequest()
with request.installed():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.5)
    assert request.signal_name == "SIGINT"
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(10)
print("not reached")
"""


def test_a_second_signal_exits_at_once():
    proc = subprocess.run([sys.executable, "-c", SECOND_SIGNAL], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 128 + signal.SIGINT
    assert "SIGINT received: saving a checkpoint at the end of this step" in proc.stderr
    assert "second signal (SIGINT): exiting now, without saving" in proc.stderr
    assert "not reached" not in proc.stdout and "Traceback" not in proc.stderr


# ---- which checkpoint, and which survive -----------------------------------------------------------------------------

def make_checkpoint(out, step: int, complete: bool = True) -> str:
    path = out / f"checkpoint-{step}"
    os.makedirs(path)
    if complete:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return str(path)


def test_resume_takes_the_newest_complete_checkpoint_and_warns_about_incomplete_ones(tmp_path, caplog):
    make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 20)
    make_checkpoint(tmp_path, 30, complete=False)  # e.g. written by a tool that is not atomic, then killed
    os.makedirs(tmp_path / STAGING_DIR / "checkpoint-40")
    with caplog.at_level("WARNING", logger="lmforge"):
        assert resolve_resume(str(tmp_path), "true") == str(tmp_path / "checkpoint-20")
    assert "Ignoring the incomplete checkpoint" in caplog.text
    assert "checkpoint-30" in caplog.text and "checkpoint-40" in caplog.text
    assert resolve_resume(str(tmp_path), "checkpoint-10") == str(tmp_path / "checkpoint-10")
    with pytest.raises(Exception, match="not a complete checkpoint"):
        resolve_resume(str(tmp_path), str(tmp_path / "checkpoint-30"))


def test_rotation_never_deletes_the_resumed_or_the_best_checkpoint(tmp_path):
    paths = {step: make_checkpoint(tmp_path, step) for step in (5, 10, 15, 20, 25)}
    deleted = rotate(str(tmp_path), 2, [paths[5], paths[10]])
    assert sorted(deleted) == sorted([paths[15]])
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path))[0]] == [
        "checkpoint-5", "checkpoint-10", "checkpoint-20", "checkpoint-25"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


def test_a_resumed_run_with_save_total_limit_keeps_its_starting_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *scratch_args(out, max_steps=6, save_steps=2)]) == 0
    assert main(["train", *scratch_args(out, max_steps=12, save_steps=2, save_total_limit=1),
                 "resume_from_checkpoint=checkpoint-4"]) == 0
    assert [os.path.basename(p) for p in list_checkpoints(str(out))[0]] == ["checkpoint-4", "checkpoint-12"]


def test_resuming_from_the_checkpoint_at_max_steps_trains_nothing(tmp_path, capsys):
    """Killed while writing its final model, a run holds checkpoint-6 of max_steps=6: resuming saves the final model
    from it and trains no step 7 (the Trainer would train one more step before checking max_steps)."""
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["train", *scratch_args(full, max_steps=6, save_steps=3, logging_steps=1)]) == 0
    os.makedirs(part)
    shutil.copytree(full / "checkpoint-6", part / "checkpoint-6")
    (part / "trainer_log.jsonl").write_text("".join(line for line in open(full / "trainer_log.jsonl")
                                                    if "loss" in json.loads(line)))
    capsys.readouterr()
    assert main(["train", *scratch_args(part, max_steps=6, save_steps=3, logging_steps=1),
                 "resume_from_checkpoint=true"]) == 0
    assert "nothing is left to train" in capsys.readouterr().err
    assert [r["step"] for r in read_log(str(part))] == [1, 2, 3, 4, 5, 6]
    assert [os.path.basename(p) for p in list_checkpoints(str(part))[0]] == ["checkpoint-6"]
    final, straight = load_file(part / "model.safetensors"), load_file(full / "model.safetensors")
    assert final.keys() == straight.keys() and all((final[k] == straight[k]).all() for k in final)


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one_and_says_so(tmp_path, capsys, monkeypatch):
    """torch.save fails as it does on a full disk at the second checkpoint: the run exits 2 with the path and the
    space, the half-written checkpoint is gone, checkpoint-3 stays and the run resumes from it."""
    import torch

    out = tmp_path / "run"
    real_save = torch.save

    def full_disk_at_step_6(obj, f, *args, **kwargs):
        if "checkpoint-6" in str(f):
            with open(f, "wb") as fh:
                fh.write(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_at_step_6)
    args = scratch_args(out, max_steps=9, save_steps=3, logging_steps=1)
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert f"No space left on device writing {out / STAGING_DIR / 'checkpoint-6'}: " in err
    assert "MiB free there; about" in err and f"The previous checkpoint {out / 'checkpoint-3'} is kept" in err
    assert "Traceback" not in err
    assert not (out / STAGING_DIR).exists()
    assert [os.path.basename(p) for p in list_checkpoints(str(out))[0]] == ["checkpoint-3"]
    assert_checkpoints_load(out)
    monkeypatch.setattr(torch, "save", real_save)  # space freed
    assert main(["train", *args, "resume_from_checkpoint=true"]) == 0
    assert [r["step"] for r in read_log(str(out)) if "loss" in r] == list(range(1, 10))


def test_a_full_disk_anywhere_is_one_line_and_exit_2(monkeypatch, capsys):
    import errno

    import lmforge.cli as cli

    def fails(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/run/trainer_log.jsonl")

    monkeypatch.setitem(cli.COMMANDS, "train", fails)
    assert main(["train", "x=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("No space left on device writing /data/run/trainer_log.jsonl: ") and "Traceback" not in err


def test_resuming_a_finished_run_trains_nothing_until_asked_for_more_steps(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "sft"
    assert main(["train", *sft_args(tiny_model_dir, out, max_steps=6, save_steps=4)]) == 0
    weights = (out / "model.safetensors").read_bytes()
    assert main(["train", *sft_args(tiny_model_dir, out, max_steps=6, save_steps=4,
                                    resume_from_checkpoint="true")]) == 0
    assert f"{out} holds a finished run (step 6): nothing to resume" in capsys.readouterr().err
    assert sorted(losses(out)) == [1, 2, 3, 4, 5, 6]  # not steps 5 and 6 again from checkpoint-4
    assert (out / "model.safetensors").read_bytes() == weights
    # asked for more, it continues from its last checkpoint
    assert main(["train", *sft_args(tiny_model_dir, out, max_steps=8, save_steps=4,
                                    resume_from_checkpoint="true")]) == 0
    assert sorted(losses(out)) == list(range(1, 9))
