"""Running a completion's code against its tests, out of the training process (`code_exec` reward).

Each run is a fresh `python -I` (`sandbox_child.py`) in a temporary directory of its own, in a new session, with
no environment but a PATH; the child limits itself (CPU time, memory, file size, processes, network, writes outside
its directory: see its docstring) and the parent kills the whole process group at the wall-clock limit. Output goes
to files under the file-size limit, never through a pipe, so code that prints without end cannot fill the trainer's
memory. A run's score is the share of its tests passed; code that hangs, crashes or is refused scores what it
passed before.

Tests come in the layouts of the common code datasets (`row_tests`):
- assert statements, as a list (MBPP's `test_list`, or `tests`) or as one block of code, with optional setup code
  (`test_setup_code`, `test_imports`);
- HumanEval's `test` (defines `check(candidate)`) with `entry_point`;
- standard input/output pairs: `{"inputs": [...], "outputs": [...]}` (APPS' `input_output`, as JSON or a dict), or a
  list of `{"input": ..., "output": ...}`; each pair is one run, passed when the printed lines equal the expected
  ones (trailing whitespace ignored).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

from lmforge.verify.math_answers import answer_part

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_child.py")
OUTPUT_KEPT = 4096  # characters of the program's output and errors kept for the report


@dataclass
class Limits:
    timeout: float = 10.0  # seconds of wall-clock per run (the CPU limit is the same, rounded up)
    memory_mb: int = 1024  # address space of the process
    file_mb: int = 16  # size of any one file it writes (its output included)


@dataclass
class CodeTests:
    """What to run a program against: statements (`asserts`, run after the code, each passing or not) or standard
    input/output pairs (`stdio`)."""

    mode: str  # "asserts" or "stdio"
    tests: list[Any] = field(default_factory=list)  # asserts: code strings; stdio: (input, expected output) pairs
    setup: str = ""  # asserts: code run before the tests (imports, helpers)

    def __len__(self) -> int:
        return len(self.tests)


@dataclass
class RunResult:
    passed: int
    total: int
    timed_out: bool = False
    output: str = ""  # the end of what the program wrote on stderr (why tests failed)

    @property
    def score(self) -> float:
        return self.passed / self.total if self.total else 0.0


FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(completion: str) -> str:
    """The program in a completion's answer (after the reasoning; none if the reasoning never ended): its last
    fenced block marked python (or unmarked); without one, the whole answer when it compiles as Python; else empty
    (scores 0)."""
    answer = answer_part(completion)
    blocks = [(lang.lower(), body) for lang, body in FENCE.findall(answer)]
    marked = [body for lang, body in blocks if lang in ("python", "py", "python3", "")]
    if marked:
        return marked[-1]
    if blocks:
        return ""
    try:
        compile(answer, "solution.py", "exec")
    except (SyntaxError, ValueError):
        return ""
    return answer.strip()


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("[", "{")):
            try:
                return _as_list(json.loads(text))
            except json.JSONDecodeError:
                pass
        return [value] if text else []
    if isinstance(value, dict):
        return [value]
    return list(value)


def row_tests(row: dict[str, Any]) -> CodeTests | None:
    """The tests of one dataset row in any layout the module docstring lists (None: the row has none)."""
    setup = "\n".join(str(s) for s in _as_list(row.get("test_imports")) + _as_list(row.get("test_setup_code")))
    if row.get("entry_point") and row.get("test"):  # HumanEval
        return CodeTests("asserts", [f"{row['test']}\ncheck({row['entry_point']})"], setup)
    for key in ("input_output", "tests", "test_list", "test"):
        value = row.get(key)
        if value in (None, "", []):
            continue
        if isinstance(value, str) and value.strip().startswith("{"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        if isinstance(value, dict) and "inputs" in value:
            inputs, outputs = value["inputs"], value.get("outputs") or []
            return CodeTests("stdio", [(_text(i), _text(o)) for i, o in zip(inputs, outputs, strict=False)])
        items = _as_list(value)
        if items and all(isinstance(i, dict) and "input" in i for i in items):
            return CodeTests("stdio", [(_text(i["input"]), _text(i.get("output", ""))) for i in items])
        return CodeTests("asserts", [str(i) for i in items if str(i).strip()], setup)
    return None


def _text(value: Any) -> str:
    return "\n".join(map(str, value)) if isinstance(value, list) else str(value)


def same_output(printed: str, expected: str) -> bool:
    """Lines equal after trailing whitespace is cut, trailing blank lines ignored (as judges compare)."""
    def lines(text: str) -> list[str]:
        out = [line.rstrip() for line in text.strip("\n").splitlines()]
        while out and not out[-1]:
            out.pop()
        return out

    return lines(printed) == lines(expected)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(1 << 20)
    except OSError:
        return ""


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class ChildRun:
    results: str  # the result file (asserts: one `NONCE INDEX` line per passed test)
    stdout: str
    stderr: str
    returncode: int
    timed_out: bool  # killed at the wall-clock or CPU limit


def _run_child(job: dict[str, Any], limits: Limits, stdin_text: str | None = None) -> ChildRun:
    """One sandboxed run."""
    workdir = tempfile.mkdtemp(prefix="lmforge-sandbox-")
    try:
        with open(os.path.join(workdir, "job.json"), "w", encoding="utf-8") as fh:
            json.dump(job, fh)
        stdin_path = os.path.join(workdir, ".stdin")
        with open(stdin_path, "w", encoding="utf-8") as fh:
            fh.write(stdin_text or "")
        out_path, err_path = os.path.join(workdir, ".stdout"), os.path.join(workdir, ".stderr")
        cpu = max(1, int(limits.timeout + 0.999))
        command = [sys.executable, "-I", "-B", CHILD, workdir, str(cpu), str(limits.memory_mb << 20),
                   str(limits.file_mb << 20)]
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
        timed_out = False
        with open(stdin_path, "rb") as stdin, open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(command, cwd=workdir, stdin=stdin, stdout=out, stderr=err, env=env,
                                    start_new_session=True, close_fds=True)
            try:
                proc.wait(timeout=limits.timeout + 1.0)  # the interpreter's own start is not the program's time
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_group(proc)  # whatever is left of its session goes too
            proc.wait()
        return ChildRun(_read(os.path.join(workdir, "results.txt")), _read(out_path), _read(err_path),
                        proc.returncode, timed_out or proc.returncode in (-signal.SIGKILL, -signal.SIGXCPU))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_tests(code: str, suite: CodeTests, limits: Limits | None = None) -> RunResult:
    """Run `code` against `suite` in the sandbox; how many tests passed."""
    limits = limits or Limits()
    total = len(suite)
    if not code.strip() or not total:
        return RunResult(0, total)
    if suite.mode == "stdio":
        passed, timed_out, errors = 0, False, ""
        for given, expected in suite.tests:
            run = _run_child({"nonce": "", "code": code, "mode": "stdio"}, limits, given)
            timed_out = timed_out or run.timed_out
            if not run.timed_out and run.returncode == 0 and same_output(run.stdout, expected):
                passed += 1
            else:
                errors = errors or run.stderr
        return RunResult(passed, total, timed_out, errors[-OUTPUT_KEPT:])
    nonce = secrets.token_hex(16)
    program = f"{suite.setup}\n{code}" if suite.setup else code
    run = _run_child({"nonce": nonce, "code": program, "mode": "asserts", "tests": suite.tests}, limits)
    passed_tests = set()
    for line in run.results.splitlines():
        head, _, index = line.partition(" ")
        if head == nonce and index.isdigit() and int(index) < total:
            passed_tests.add(int(index))
    return RunResult(len(passed_tests), total, run.timed_out, run.stderr[-OUTPUT_KEPT:])
