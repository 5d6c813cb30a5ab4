"""Every command of the README's quickstarts runs as written, in order, in a fresh folder: what a newcomer types. The
trainings run two steps each (`max_steps=2` appended: the README's own figures come from full runs), so the test
checks that the commands, configs and files fit together, not what the runs reach."""

from __future__ import annotations

import os
import re
import runpy
import shlex
import sys

import pytest

from lmforge.cli import main
from tests.conftest import REPO

pytestmark = pytest.mark.slow  # training runs, servers, browsers: `pytest -m "not slow"` skips them

SHORT_RUN = ["max_steps=2", "save_steps=1", "logging_steps=1"]  # what a train command gets appended


def quickstart_commands() -> list[str]:
    """The shell lines of the bash blocks under the README's `## Quickstart` headings and of the multiple-choice
    quickstart, in order (comments cut, continued lines joined). The classification quickstart starts from a hub
    checkpoint (bert-base-uncased), which tests cannot download."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    commands: list[str] = []
    for section in re.split(r"^## ", readme, flags=re.M):
        for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
            if not (section.startswith("Quickstart") or block.startswith("python -m lmforge.resources.mc_quickstart")):
                continue
            joined = block.replace("\\\n", " ")
            commands += [" ".join(line.split("  #")[0].split()) for line in joined.splitlines()
                         if line.strip() and not line.lstrip().startswith("#")]
    return commands


def test_the_readme_quickstart_blocks_are_the_commands_this_test_runs():
    commands = quickstart_commands()
    assert commands[0] == "lmforge train examples/pretrain_quickstart.yaml"
    assert "lmforge score saves/quickstart-rm examples/score_quickstart.jsonl" in commands
    assert commands[-4:] == [
        "python -m lmforge.resources.mc_quickstart data/mc_quickstart",
        "lmforge eval examples/eval_mc_quickstart.yaml model_name_or_path=saves/quickstart-sft "
        "output_dir=saves/eval-mc-before",
        "lmforge train examples/sft_mc_quickstart.yaml", "lmforge eval examples/eval_mc_quickstart.yaml"]


def test_every_readme_quickstart_command_runs_as_written_in_order(tmp_path, monkeypatch, capsys):
    os.symlink(REPO / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    for command in quickstart_commands():
        if command.startswith("python -m "):  # a generator module, run as its own process would run it
            module, *argv = shlex.split(command)[2:]
            monkeypatch.setattr(sys, "argv", [module, *argv])
            try:
                runpy.run_module(module, run_name="__main__")
            except SystemExit as done:
                assert done.code in (0, None), command
            continue
        args = shlex.split(command)[1:]
        if args[0] == "train":
            args += SHORT_RUN
        code = main(args)
        printed = capsys.readouterr()
        assert code == 0, (command, printed.err[-3000:])
        if args[0] == "score":  # each reward beside the answer it scored, one line each
            lines = printed.out.splitlines()
            assert len(lines) == 8 and all(re.fullmatch(r"-?\d+\.\d{6}\t\S.*", line) for line in lines), lines
    for output in ("quickstart", "quickstart-sft", "quickstart-rm", "quickstart-reasoning-grpo", "quickstart-mc"):
        assert (tmp_path / "saves" / output / "config.json").is_file(), output
    for evaluation in ("eval-mc-before", "eval-mc-quickstart"):  # before and after, each kept
        assert (tmp_path / "saves" / evaluation / "results.json").is_file(), evaluation
