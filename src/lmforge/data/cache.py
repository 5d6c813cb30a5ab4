"""On-disk cache of preprocessed data, keyed by a fingerprint of everything that changes the result.

Entries are written to a temporary directory and renamed into place, so a killed run never leaves a half-written
entry that a later run would trust.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lmforge.config.data import cache_home
from lmforge.data.registry import SourceSpec, hub_lookup
from lmforge.jsonl import with_default_mode

CACHE_FORMAT = 1  # bump when the layout or content of cached data changes


def cache_root(configured: str | None = None) -> str:
    root = configured or cache_home()
    os.makedirs(root, exist_ok=True)
    return root


# The modules whose code decides the ids, labels and blocks that are cached: an lmforge that changes any of them
# (an upgrade, a local edit) misses entries written by the old code instead of serving stale encodings.
ENCODING_MODULES = ("data.records", "data.formats", "data.registry", "data.loading", "data.template", "data.encode",
                    "data.chat_templates", "data.examples", "data.chunking", "data.pretrain", "data.packing",
                    "data.stream", "data.media", "data.multimodal", "data.skips", "model.tokenizer", "model.multimodal")


@functools.lru_cache(maxsize=1)
def code_identity() -> dict[str, str]:
    """lmforge's version and a hash of the source of `ENCODING_MODULES`."""
    from lmforge import __version__

    digest = hashlib.sha256()
    for name in ENCODING_MODULES:
        spec = importlib.util.find_spec(f"lmforge.{name}")
        with open(spec.origin, "rb") as fh:
            digest.update(name.encode() + b"\0" + fh.read())
    return {"lmforge": __version__, "encoding_code": digest.hexdigest()[:20]}


def fingerprint(payload: Any) -> str:
    """A cache key: `payload` plus the identity of the code that builds what is cached."""
    blob = json.dumps([payload, code_identity()], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def hub_revision(repo_id: str) -> str | None:
    """The commit a hub dataset id resolves to: asked of the hub when online (once per process: a run computes
    several cache keys), else read from the local hub cache's refs (None where neither knows: the key then holds the
    name only)."""
    from huggingface_hub import constants

    status, commit = hub_lookup(repo_id)
    if status == "found" and commit:
        return commit
    ref = os.path.join(constants.HF_HUB_CACHE, f"datasets--{repo_id.replace('/', '--')}", "refs", "main")
    if os.path.isfile(ref):
        with open(ref, encoding="utf-8") as fh:
            return fh.read().strip() or None
    return None


def source_identity(spec: SourceSpec) -> dict[str, Any]:
    """What identifies a source's content: files by path, size and modification time; hub ids by name/split."""
    remote = spec.kind in ("hub", "modelscope")
    ident: dict[str, Any] = {"kind": spec.kind, "path": spec.path if remote else os.path.abspath(spec.path),
                             "column": spec.text_column, "split": spec.split, "subset": spec.subset,
                             "num_samples": spec.num_samples, "entry": spec.entry}
    if spec.kind == "hub":
        ident["revision"] = hub_revision(spec.path)
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
        with_default_mode(tmp, directory=True)
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


PREPARED_FILE = "prepared.json"  # in a `tokenized_dir`: the settings its examples were prepared with


def cached_splits(cache_dir: str | None, kind: str, identity: Any, overwrite: bool,
                  build: Callable[[str], tuple[dict, dict]], path: str | None = None,
                  prepared: dict | None = None) -> CachedSplits:
    """Dataset splits cached under `kind/<fingerprint of identity>` (or in `path`, a `tokenized_dir`, with the
    `prepared` settings beside them). On a miss (or `overwrite`), `build(workdir)` returns ({"train": ...,
    "eval": ...}, stats); `workdir` is scratch space deleted once the splits are saved."""
    path = path or os.path.join(cache_root(cache_dir), kind, fingerprint(identity))
    if overwrite and os.path.isdir(path):
        shutil.rmtree(path)

    def write(tmp: str) -> None:
        import datasets

        workdir = os.path.join(tmp, "work")
        os.makedirs(workdir)
        parts, stats = build(workdir)
        datasets.DatasetDict(parts).save_to_disk(os.path.join(tmp, "data"))
        with open(os.path.join(tmp, "stats.json"), "w") as fh:
            json.dump(stats, fh, indent=2)
        if prepared is not None:
            with open(os.path.join(tmp, PREPARED_FILE), "w") as fh:
                json.dump(prepared, fh, indent=2)
        del parts  # the splits may be backed by files in workdir
        shutil.rmtree(workdir)

    hit = cached(path, write)
    return read_splits(path, hit)


def read_splits(path: str, hit: bool = True) -> CachedSplits:
    import datasets

    with open(os.path.join(path, "stats.json")) as fh:
        stats = json.load(fh)
    data = datasets.load_from_disk(os.path.join(path, "data"))
    return CachedSplits(data["train"], data["eval"] if "eval" in data else None, stats, hit, path)


def fresh_fingerprint() -> str:
    """A fingerprint for `Dataset.map`, so that datasets does not derive one by pickling the mapped function and the
    tokenizer inside it (8 s per call for a 151k-token Qwen tokenizer, measured): lmforge's own cache keys results."""
    return uuid.uuid4().hex
