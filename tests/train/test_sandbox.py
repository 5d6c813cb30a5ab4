"""The `code_exec` reward's sandbox: correct programs score the share of tests they pass in every common test
layout, and hostile programs (endless loops, fork bombs, huge allocations, network, writes outside the directory,
killing the trainer, forged results) score what they honestly passed, within the time limit, leaving the calling
process and the machine untouched."""

from __future__ import annotations

import os
import time

import psutil
import pytest

from lmforge.errors import DataError
from lmforge.train.rl.rewards import CodeExecReward
from lmforge.verify.sandbox import CodeTests, Limits, extract_code, row_tests, run_tests, same_output

LIMITS = Limits(timeout=3.0, memory_mb=512)
ADD_TESTS = CodeTests("asserts", ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(-1, 1) == 0"])
GOOD = "def add(a, b):\n    return a + b\n"


def test_a_correct_program_passes_and_a_partly_wrong_one_scores_its_share():
    assert run_tests(GOOD, ADD_TESTS, LIMITS).score == 1.0
    half = run_tests("def add(a, b):\n    return a + b if a >= 0 else 99\n", ADD_TESTS, LIMITS)
    assert (half.passed, half.total) == (2, 3)
    assert "test 2: AssertionError" in half.output


@pytest.mark.parametrize("name, code, passed", [
    ("endless loop in the function", "def add(a, b):\n    while True:\n        pass\n", 0),
    ("endless loop at import", "while True:\n    pass\n", 0),
    ("sleeps past the wall clock", "import time\ntime.sleep(60)\n" + GOOD, 0),
    ("second test hangs", "def add(a, b):\n    while a == 2:\n        pass\n    return a + b\n", 1),
    ("fork bomb", "import os\nwhile True:\n    os.fork()\n" + GOOD, 0),
    ("subprocess", "import subprocess\nsubprocess.run(['touch', '{canary}'])\n" + GOOD, 0),
    ("os.system", "import os\nos.system('touch {canary}')\n" + GOOD, 0),
    ("huge allocation", "block = bytearray(8 * 1024 ** 3)\n" + GOOD, 0),
    ("growing allocation", "chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 1024 ** 2))\n", 0),
    ("network", "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\n" + GOOD, 0),
    ("network by address", "import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 22))\n" + GOOD, 0),
    ("writes outside its directory", "open('{canary}', 'w').write('x')\n" + GOOD, 0),
    ("removes outside its directory", "import os\nos.remove('{victim}')\n" + GOOD, 0),
    ("kills the trainer", "import os\nos.kill(os.getppid(), 9)\n" + GOOD, 0),
    ("native code", "import ctypes\nctypes.CDLL(None).system(b'touch {canary}')\n" + GOOD, 0),
    ("raises its own limits", "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (999, 999))\n" + GOOD, 0),
    ("exits before the tests with status 0", "import os\nos._exit(0)\n", 0),
    ("forges the result lines", "import sys\nfor i in range(3):\n    print(f'0 {{i}}')\n"
     "    sys.stdout.flush()\n" + "def add(a, b):\n    return 99\n", 0),
    ("floods its output", "while True:\n    print('x' * 100000)\n", 0),
    ("writes inside its directory (allowed)", "open('scratch.txt', 'w').write('ok')\n" + GOOD, 3),
])
def test_hostile_programs_are_contained(tmp_path, name, code, passed):
    canary, victim = tmp_path / "canary", tmp_path / "victim"
    victim.write_text("keep me")
    me = psutil.Process()
    # processes this test did not start (multiprocessing's resource tracker, other tests' servers) are not its own
    before = {p.pid for p in me.children(recursive=True)}
    started = time.monotonic()
    result = run_tests(code.format(canary=canary, victim=victim), ADD_TESTS, LIMITS)
    assert result.passed == passed, result.output
    assert time.monotonic() - started < LIMITS.timeout + 10  # killed at the limit, not left running
    assert not canary.exists() and victim.read_text() == "keep me"
    assert not {p.pid for p in me.children(recursive=True)} - before  # nothing of it outlives the run


def test_test_layouts_of_the_common_code_datasets():
    mbpp = row_tests({"test_list": ["assert f(1) == 2"], "test_setup_code": "import math", "test_imports": []})
    assert (mbpp.mode, mbpp.tests, mbpp.setup) == ("asserts", ["assert f(1) == 2"], "import math")
    humaneval = row_tests({"test": "def check(candidate):\n    assert candidate(1) == 2\n", "entry_point": "f"})
    assert humaneval.tests == ["def check(candidate):\n    assert candidate(1) == 2\n\ncheck(f)"]
    apps = row_tests({"input_output": '{"inputs": ["1\\n", "5\\n"], "outputs": ["2\\n", "10\\n"]}'})
    assert (apps.mode, apps.tests) == ("stdio", [("1\n", "2\n"), ("5\n", "10\n")])
    pairs = row_tests({"tests": [{"input": "3", "output": "6"}]})
    assert (pairs.mode, pairs.tests) == ("stdio", [("3", "6")])
    block = row_tests({"tests": "assert f(1) == 2\nassert f(2) == 3"})
    assert block.tests == ["assert f(1) == 2\nassert f(2) == 3"]
    assert row_tests({"prompt": "x"}) is None


def test_standard_input_output_programs_are_judged_line_by_line():
    suite = CodeTests("stdio", [("3\n", "6\n"), ("4\n", "8"), ("5\n", "11\n")])
    result = run_tests("n = int(input())\nprint(n * 2)   \n", suite, LIMITS)
    assert (result.passed, result.total) == (2, 3)
    crashed = run_tests("print(6)\nraise SystemExit(1)\n", CodeTests("stdio", [("3\n", "6\n")]), LIMITS)
    assert crashed.passed == 0  # the right output, but a failing exit status
    assert same_output("a  \nb\n\n", "a\nb") and not same_output("a\nb", "a\nc")


def test_the_program_is_the_last_python_block_after_the_reasoning():
    completion = "<think>```python\ndraft = 1\n```</think>Here it is:\n```python\ndef f():\n    return 1\n```\nDone."
    assert extract_code(completion) == "def f():\n    return 1\n"
    assert extract_code("```bash\nrm -rf /\n```") == ""
    assert extract_code("def f():\n    return 2") == "def f():\n    return 2"
    assert extract_code("I cannot solve this.") == ""
    assert extract_code("<think>```python\ndef f():\n    return 1\n```") == ""  # the reasoning never ended


def test_code_exec_reward_runs_completions_side_by_side_with_the_rows_tests():
    reward = CodeExecReward(workers=3, limits=LIMITS)
    completions = [f"```python\n{GOOD}```", "```python\ndef add(a, b):\n    return abs(a) + b\n```", "no code", GOOD]
    columns = {"test_list": [ADD_TESTS.tests] * 3 + [None],
               "input_output": [None, None, None, {"inputs": ["1 2\n"], "outputs": ["3\n"]}]}
    # the last row's program reads no input: its stdio test fails
    scores = reward([""] * 4, completions, **columns)
    assert scores == pytest.approx([1.0, 2 / 3, 0.0, 0.0])
    # a prompt without tests scores 0 and does not stop the others; data with no tests at all is refused up front
    assert reward(["", ""], [GOOD, GOOD], test_list=[ADD_TESTS.tests, None]) == [1.0, 0.0]
    reward.check_rows([{"test_list": ["assert True"]}, {"prompt": "no tests"}])
    with pytest.raises(DataError, match="no prompt has any of them"):
        reward.check_rows([{"prompt": "x"}, {"solution": "4"}])


def test_the_sandbox_leaves_no_directory_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    run_tests(GOOD, ADD_TESTS, LIMITS)
    run_tests("while True:\n    pass\n", ADD_TESTS, Limits(timeout=1.0))
    assert os.listdir(tmp_path) == []
