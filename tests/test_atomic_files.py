"""Files and folders written atomically get the mode a plain open/mkdir gives (the umask's), not mkstemp's private
0600/0700: a shared cache or a saved model stays readable by the others who read it."""

from __future__ import annotations

import os
import stat

from lmforge.config.data import DataArguments
from lmforge.data.pretrain import build_pretrain_data
from lmforge.jsonl import atomic_dir, write_json
from tests.conftest import write_jsonl


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_files_folders_and_cache_entries_follow_the_umask(tmp_path, tiny_tokenizer):
    old = os.umask(0o022)
    try:
        write_json(str(tmp_path / "report.json"), {"a": 1})
        with atomic_dir(str(tmp_path / "model")) as staging:
            write_json(os.path.join(staging, "config.json"), {})
        corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": "a few words of text " * 20}] * 10)
        data = build_pretrain_data(DataArguments(dataset=str(corpus), dataset_dir=str(tmp_path), cutoff_len=16,
                                                 allow_absolute_file_name=True), tiny_tokenizer, seed=0)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "report.json") == 0o644
    assert _mode(tmp_path / "model") == 0o755 and _mode(tmp_path / "model" / "config.json") == 0o644
    assert _mode(data.cache_path) == 0o755  # the cache entry, renamed from its mkdtemp staging folder
