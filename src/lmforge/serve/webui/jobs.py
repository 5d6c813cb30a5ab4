"""What the web UI does besides drawing: a training config from form values, validated; lmforge commands run as
child processes (the UI stays responsive, a crash is the run's, not the UI's, and a run outlives the page and the
server that started it); a run's progress read back, a stopped run resumed, a config's data previewed."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import yaml

from lmforge.config.coerce import coerce
from lmforge.config.parse import build_config
from lmforge.config.schema import RUN_CONFIG_FILE, key_index
from lmforge.config.secrets import SECRETS_ENV, masked, secret_values
from lmforge.errors import LmforgeError
from lmforge.jsonl import atomic_open
from lmforge.runlog import read_log
from lmforge.runstatus import is_lmforge_process, read_status
from lmforge.serve.webui.runs import UI_COMMAND_LOG

CONFIG_FILE = "webui_config.yaml"
COMMAND_LOG = UI_COMMAND_LOG


def config_values(form: dict[str, Any], extra_yaml: str = "") -> dict[str, Any]:
    """The run's keys: the form's non-empty values that differ from the defaults (stage, model, data and output
    always), then the extra YAML, which wins. Raises ValueError for extra YAML that is not a mapping."""
    index = key_index("train")
    always = {"stage", "model_name_or_path", "dataset", "output_dir"}
    values = {}
    for key, value in form.items():
        if value is None or value == "":
            continue
        if isinstance(value, float) and value.is_integer() and "int" in str(index[key].type):
            value = int(value)  # number inputs arrive as floats
        if isinstance(value, str) and not isinstance(index[key].default, str):  # an optional number typed as text
            try:
                value = coerce(key, value.strip(), index[key].type, "web UI")
            except LmforgeError:
                pass  # kept as typed: validation names the key and what it expects
        if key in always or value != index[key].default:
            values[key] = value
    extra = yaml.safe_load(extra_yaml) if extra_yaml.strip() else {}
    if not isinstance(extra, dict):
        raise ValueError("the extra keys must be YAML `key: value` lines")
    return {**values, **extra}


def preview(form: dict[str, Any], extra_yaml: str = "") -> tuple[str, str, str]:
    """(YAML text, the command that runs it, the validation result) for the form as it stands."""
    try:
        values = config_values(form, extra_yaml)
    except (ValueError, yaml.YAMLError) as err:
        return "", "", f"Extra keys: {err}"
    text = yaml.safe_dump(masked(values), sort_keys=False, allow_unicode=True)
    path = os.path.join(values.get("output_dir") or "OUTPUT_DIR", CONFIG_FILE)
    command = f"lmforge train {shlex.quote(path)}"
    try:
        build_config(values, source="web UI")
    except LmforgeError as err:
        return text, command, str(err)
    return text, command, "The config is valid."


def read_progress(output_dir: str) -> list[dict]:
    """trainer_log.jsonl as far as it is written (a line being appended is skipped until complete)."""
    return read_log(output_dir, while_written=True)


@dataclass
class Job:
    """One lmforge command running as a child process, its output going to a log file."""

    argv: list[str]
    log_path: str
    secrets: dict[str, Any] = field(default_factory=dict, repr=False)  # passed in the environment, never on disk
    output_dir: str = ""  # a training run's folder
    process: subprocess.Popen | None = None
    _log: Any = field(default=None, repr=False)

    def start(self) -> None:
        os.makedirs(os.path.dirname(self.log_path) or ".", exist_ok=True)
        self._log = open(self.log_path, "a", encoding="utf-8")  # a resumed run continues its log
        env = {**os.environ, SECRETS_ENV: json.dumps(self.secrets)} if self.secrets else None
        self.process = subprocess.Popen([sys.executable, "-m", "lmforge", *self.argv], stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True, env=env)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def status(self) -> str:
        if self.process is None:
            return "not started"
        code = self.process.poll()
        if code is None:
            return "running"
        return "finished" if code == 0 else f"failed (exit {code})"

    def stop(self) -> None:
        """SIGTERM, as a scheduler would send: the run decides how to end."""
        if self.running:
            os.killpg(self.process.pid, signal.SIGTERM)

    def output(self, lines: int = 40) -> str:
        if not os.path.isfile(self.log_path):
            return ""
        with open(self.log_path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])


PLAN_SECONDS = 600  # a plan traces the step and maybe its suggested changes over fake tensors: seconds to minutes


def _run_on_config(values: dict[str, Any], command: list[str], options: list[str], timeout: int
                   ) -> tuple[bool, str]:
    """`lmforge COMMAND CONFIG OPTIONS` on the values written to a temporary config (secrets in the environment):
    (True, its output) or (False, its one-line error). A child process, as training is: planning builds the model
    over fake tensors and previewing loads a tokenizer and the data, which is the command's business, not the UI's."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, CONFIG_FILE)
        with open(path, "w", encoding="utf-8") as fh:
            yaml.safe_dump(masked(values), fh, sort_keys=False, allow_unicode=True)
        argv = [*command, path, *options]
        env = {**os.environ, SECRETS_ENV: json.dumps(secret_values(values))}
        try:
            done = subprocess.run([sys.executable, "-m", "lmforge", *argv], capture_output=True, text=True,
                                  timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return False, f"`lmforge {' '.join(command)}` did not finish in {timeout} s."
    if done.returncode != 0:
        return False, (done.stderr.strip().splitlines() or [f"`lmforge {' '.join(command)}` failed (exit "
                                                             f"{done.returncode})"])[-1]
    return True, done.stdout.strip()


def plan(values: dict[str, Any], gpus: str, gpu_memory: str = "") -> str:
    """What `lmforge plan` prints for the config as it stands on `gpus` (e.g. 1xRTX-4090, 8xH100-80GB; with
    `gpu_memory` for a device it does not know): the same text as on the command line, or its error."""
    _, text = _run_on_config(values, ["plan"], [*(["--gpus", gpus.strip()] if gpus.strip() else []),
                                                *(["--gpu-memory", gpu_memory.strip()] if gpu_memory.strip() else [])],
                             PLAN_SECONDS)
    return text


def data_preview(values: dict[str, Any], num: int = 3) -> dict[str, Any] | str:
    """`lmforge data preview --json` on the config as it stands: its summary (examples as trained/context segments,
    statistics, skip reasons), or its one-line error."""
    ok, text = _run_on_config(values, ["data", "preview"], ["--num", str(int(num)), "--json"], PLAN_SECONDS)
    if not ok:
        return text
    return json.loads(text.splitlines()[-1])


def start_training(values: dict[str, Any]) -> Job:
    """Write the config into its output_dir and run `lmforge train` on it."""
    output_dir = values["output_dir"]
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, CONFIG_FILE)
    with atomic_open(path, ".yaml") as fh:
        yaml.safe_dump(masked(values), fh, sort_keys=False, allow_unicode=True)
    job = Job(["train", path], os.path.join(output_dir, COMMAND_LOG), secret_values(values), output_dir)
    job.start()
    return job


def resume_run(path: str) -> Job:
    """`lmforge train` on a stopped run's own config, from its newest complete checkpoint."""
    job = Job(["train", os.path.join(path, RUN_CONFIG_FILE), "resume_from_checkpoint=true"],
              os.path.join(path, COMMAND_LOG), output_dir=path)
    job.start()
    return job


def stop_run(path: str) -> bool:
    """SIGTERM to the process that speaks for a running run (whoever started it): it saves a checkpoint and ends.
    False when no run of this machine is running there."""
    status = read_status(path)
    pid = int(status.get("pid") or 0)
    here = status.get("host") in (None, socket.gethostname())
    if status.get("status") != "running" or not pid or not here or not is_lmforge_process(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    return True
