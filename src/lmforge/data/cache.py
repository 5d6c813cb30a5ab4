"""On-disk cache of preprocessed data, keyed by a fingerprint of everything that changes the result.

Entries are written to a temporary directory and renamed into place, so a killed run never leaves a half-written
entry that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from lmforge.data.registry import SourceSpec

CACHE_FORMAT = 1  # bump when the layout or content of cached data changes


def cache_root(configured: str | None = None) -> str:
    root = configured or os.environ.get("LMFORGE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lmforge")
    os.makedirs(root, exist_ok=True)
    return root


def fingerprint(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def source_identity(spec: SourceSpec) -> dict[str, Any]:
    """What identifies a source's content: files by path, size and modification time; hub ids by name/split."""
    ident: dict[str, Any] = {"kind": spec.kind, "path": os.path.abspath(spec.path) if spec.kind != "hub" else spec.path,
                             "column": spec.text_column, "split": spec.split, "subset": spec.subset,
                             "num_samples": spec.num_samples, "entry": spec.entry}
    paths = list(spec.files)
    if spec.kind == "disk":
        paths = sorted(os.path.join(r, f) for r, _, fs in os.walk(spec.path) for f in fs)
    ident["files"] = [(os.path.abspath(p), os.path.getsize(p), os.stat(p).st_mtime_ns) for p in paths]
    return ident


def cached(path: str, build: Callable[[str], None]) -> bool:
    """Ensure `path` exists, building it with `build(tmp_dir)` and renaming atomically. True if it was a cache hit."""
    if os.path.isdir(path):
        return True
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=parent)
    try:
        build(tmp)
        try:
            os.rename(tmp, path)
        except OSError:  # another process finished the same entry first: keep theirs
            if not os.path.isdir(path):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return False


def save_splits(tmp: str, parts: dict, stats: dict) -> None:
    """Write a cache entry of dataset splits (`data/`) and their statistics (`stats.json`) into `tmp`."""
    from datasets import DatasetDict

    DatasetDict(parts).save_to_disk(os.path.join(tmp, "data"))
    with open(os.path.join(tmp, "stats.json"), "w") as fh:
        json.dump(stats, fh, indent=2)


def load_splits(path: str) -> tuple[Any, Any, dict]:
    """(train, eval or None, stats) of a cache entry written by `save_splits`."""
    import datasets

    with open(os.path.join(path, "stats.json")) as fh:
        stats = json.load(fh)
    data = datasets.load_from_disk(os.path.join(path, "data"))
    return data["train"], data["eval"] if "eval" in data else None, stats
