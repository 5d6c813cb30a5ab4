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


# ---- one run per output_dir: the lock --------------------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from lmforge.train.runtime.output_dir import RunLock
lock = RunLock(sys.argv[1])
print("locked", flush=True)
time.sleep(120)
"""


def test_a_run_started_while_another_holds_the_output_dir_exits_2_naming_its_pid(tmp_path, capsys):
    import subprocess
    import sys

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", *scratch_args(out, max_steps=2)]) == 2
        err = capsys.readouterr().err
        assert f"output_dir '{out}' is in use by another run (pid {holder.pid} on " in err and "Traceback" not in err
        assert sorted(os.listdir(out)) == [".lmforge-run.lock"]  # the second run wrote nothing
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: the kernel dropped its lock, the stale file is taken over
    assert main(["train", *scratch_args(out, max_steps=2, save_steps=2)]) == 0
    assert not (out / ".lmforge-run.lock").exists()  # released and removed at the end of the run


def test_two_runs_started_at_once_into_one_output_dir_one_trains(tmp_path):
    from tests.train.test_resume import start_training

    out = tmp_path / "run"
    procs = [start_training(scratch_args(out, max_steps=3, save_steps=3, logging_steps=1)) for _ in range(3)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2, 2], [e[-1500:] for _, e in results]
    for code, err in results:
        if code == 2:
            assert "is in use by another run" in err or "already holds a run" in err, err[-1500:]
    assert [json.loads(line)["step"] for line in open(out / "trainer_log.jsonl")][:3] == [1, 2, 3]


def test_the_lock_is_exclusive_and_released():
    import tempfile

    from lmforge.errors import ConfigError
    from lmforge.train.runtime.output_dir import RunLock

    with tempfile.TemporaryDirectory() as out:
        with RunLock(out):
            with pytest.raises(ConfigError, match=rf"pid {os.getpid()} on "):
                RunLock(out)
        with RunLock(out):  # free again
            pass
        assert os.listdir(out) == []
