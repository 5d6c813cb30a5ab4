"""Ollama TEMPLATEs executed by Go's own text/template (tests/export/ollama_render/main.go), built once per test
session with the machine's Go (`.ci/run` installs Debian's golang-go)."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

SOURCE = Path(__file__).with_name("ollama_render") / "main.go"


@functools.lru_cache(maxsize=1)
def _binary() -> str:
    go = shutil.which("go")
    if go is None:
        if os.environ.get("CI"):
            raise RuntimeError("Go is not installed: .ci/run installs golang-go for the Ollama template tests")
        pytest.skip("Go is not installed (apt-get install golang-go)")
    out = os.path.join(tempfile.mkdtemp(prefix="ollama-render-"), "ollama-render")
    # one file, no module: built in GOPATH mode, with a build cache of its own (CI's HOME may not be writable)
    env = {**os.environ, "GOCACHE": os.path.join(os.path.dirname(out), "cache"), "GO111MODULE": "off"}
    subprocess.run([go, "build", "-o", out, str(SOURCE)], check=True, env=env, capture_output=True, timeout=300)
    return out


def execute_go(template: str, messages: list[dict]) -> str:
    """What Ollama's Go template engine renders for `messages`."""
    with tempfile.NamedTemporaryFile("w", suffix=".tmpl", delete=False, encoding="utf-8") as fh:
        fh.write(template)
    try:
        values = {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
        done = subprocess.run([_binary(), fh.name], input=json.dumps(values), capture_output=True, text=True,
                              timeout=60)
    finally:
        os.unlink(fh.name)
    assert done.returncode == 0, done.stderr
    return done.stdout
