"""`lmforge bench CONFIG --prepare`: `lmforge data prepare CONFIG` timed end to end in a fresh process, on a cold cache
(a new, empty one each repeat), with its peak memory: anonymous (what the process itself holds) and resident (which
also counts the pages of memory-mapped files read, which the kernel drops under pressure)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

import psutil


def _anonymous(pid: int) -> int:
    """RssAnon of a process (Linux), in bytes: its own memory, not file pages it maps."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_sampled(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run `command`; its exit code, seconds, stderr, and the peak memory of it and its children (sampled every
    50 ms): anonymous (RssAnon) and resident bytes."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+", encoding="utf-8") as err:  # a file, not a pipe: a full pipe would stall it
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err)
        root = psutil.Process(proc.pid)
        peak_anon = peak_rss = 0
        while proc.poll() is None:
            try:
                procs = [root, *root.children(recursive=True)]
                peak_anon = max(peak_anon, sum(_anonymous(p.pid) for p in procs))
                peak_rss = max(peak_rss, sum(p.memory_info().rss for p in procs))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        err.seek(0)
        return {"code": proc.returncode, "seconds": seconds, "stderr": err.read(), "peak_anonymous": peak_anon,
                "peak_resident": peak_rss}


def _sets_tokenized_dir(config: str | None, overrides: list[str]) -> bool:
    from lmforge.config.parse import merge, parse_overrides, read_yaml

    return bool(merge(read_yaml(config) if config else {}, parse_overrides(overrides)).get("tokenized_dir"))


def measure_prepare(config: str | None, overrides: list[str], repeats: int = 1) -> dict[str, Any]:
    """Best of `repeats` cold runs of `lmforge data prepare`, with what it reported."""
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="lmforge-bench-cache-") as cache:
            cold = [f"tokenized_cache_dir={cache}"]
            if _sets_tokenized_dir(config, overrides):  # a prepared folder would be read, not prepared: a new one
                cold.append(f"tokenized_dir={os.path.join(cache, 'prepared')}")
            command = [sys.executable, "-m", "lmforge", "data", "prepare", *([config] if config else []), *overrides,
                       *cold]
            run = run_sampled(command, {**os.environ, "LMFORGE_CACHE": cache})
        if run["code"] != 0:
            raise RuntimeError(f"lmforge data prepare failed ({run['code']}):\n{run['stderr'][-3000:]}")
        counts = re.search(r"train: ([\d,]+) (?:blocks|examples), ([\d,]+) tokens", run["stderr"])
        runs.append({"seconds": round(run["seconds"], 1), "peak_anonymous_mib": round(run["peak_anonymous"] / 2**20),
                     "peak_resident_mib": round(run["peak_resident"] / 2**20),
                     "train_rows": int(counts.group(1).replace(",", "")) if counts else 0,
                     "train_tokens": int(counts.group(2).replace(",", "")) if counts else 0})
    best = min(runs, key=lambda r: r["seconds"])
    best["tokens_per_second"] = round(best["train_tokens"] / best["seconds"])
    return {"config": config, "overrides": overrides, "runs": runs, "best": best}


def report(result: dict[str, Any]) -> str:
    b = result["best"]
    return (f"lmforge data prepare (cold cache, best of {len(result['runs'])}): {b['seconds']} s, "
            f"{b['tokens_per_second']:,} tokens/s; {b['train_rows']:,} rows, {b['train_tokens']:,} tokens; peak "
            f"memory: anonymous {b['peak_anonymous_mib']:,} MiB, resident {b['peak_resident_mib']:,} MiB")
