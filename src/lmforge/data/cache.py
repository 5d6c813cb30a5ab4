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
from dataclasses import dataclass
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



@dataclass
class CachedSplits:
    train: Any
    eval: Any | None
    stats: dict
    hit: bool  # read from the cache rather than built now
    path: str


def cached_splits(cache_dir: str | None, kind: str, identity: Any, overwrite: bool,
                  build: Callable[[str], tuple[dict, dict]]) -> CachedSplits:
    """Dataset splits cached under `kind/<fingerprint of identity>`. On a miss (or `overwrite`), `build(workdir)`
    returns ({"train": ..., "eval": ...}, stats); `workdir` is scratch space deleted once the splits are saved."""
    import datasets

    path = os.path.join(cache_root(cache_dir), kind, fingerprint(identity))
    if overwrite and os.path.isdir(path):
        shutil.rmtree(path)

    def write(tmp: str) -> None:
        workdir = os.path.join(tmp, "work")
        os.makedirs(workdir)
        parts, stats = build(workdir)
        datasets.DatasetDict(parts).save_to_disk(os.path.join(tmp, "data"))
        with open(os.path.join(tmp, "stats.json"), "w") as fh:
            json.dump(stats, fh, indent=2)
        del parts  # the splits may be backed by files in workdir
        shutil.rmtree(workdir)

    hit = cached(path, write)
    with open(os.path.join(path, "stats.json")) as fh:
        stats = json.load(fh)
    data = datasets.load_from_disk(os.path.join(path, "data"))
    return CachedSplits(data["train"], data["eval"] if "eval" in data else None, stats, hit, path)
