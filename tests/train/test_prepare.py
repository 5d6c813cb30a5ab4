"""`lmforge data prepare`: the run's examples tokenized into the cache ahead of training, reported, and read back by
the run's own data step (what `lmforge train` calls) without tokenizing again."""

from __future__ import annotations

import os
import re

import pytest

from lmforge.cli import main
from lmforge.config import load_config
from tests.conftest import LF_DEMO


def test_prepare_fills_the_cache_the_run_reads_and_reports_what_is_in_it(real_model, tmp_path, capsys):
    from lmforge.train.preview import length_stats
    from lmforge.train.stage_data import chat_examples

    # Qwen3's own tokenizer and chat template
    overrides = ["stage=sft", f"model_name_or_path={real_model('qwen3')}", "dataset=alpaca_en_demo",
                 f"dataset_dir={LF_DEMO}", "cutoff_len=64", "packing=true", "val_size=10", "max_samples=200",
                 f"tokenized_cache_dir={tmp_path / 'shared-cache'}"]
    assert main(["data", "prepare", *overrides]) == 0
    first = capsys.readouterr().err
    prepared = re.search(r"Prepared sft data in [\d.]+ s \(tokenized now\): (\S+)", first)
    assert prepared and prepared.group(1).startswith(str(tmp_path / "shared-cache")), first
    path = prepared.group(1)
    assert os.path.isfile(os.path.join(path, "stats.json"))

    # the run's data step, as `lmforge train` with the same config runs it: the same entry, nothing tokenized
    cfg = load_config(None, [*overrides, f"output_dir={tmp_path / 'run'}"])
    data = chat_examples(cfg).data
    assert data.from_cache and data.cache_path == path
    stats = length_stats(data.train, 64)
    assert f"train: {len(data.train):,} examples, {stats['tokens']:,} tokens; eval: 10 examples" in first
    assert f"packed into {stats['packed_rows']:,} rows" in first

    assert main(["data", "prepare", *overrides]) == 0  # again: read, not tokenized
    assert f"(read from the cache): {path}" in capsys.readouterr().err


def test_prepare_refuses_what_it_cannot_prepare_ahead(tiny_model_dir, tmp_path, capsys):
    pt = ["stage=pt", f"model_name_or_path={tiny_model_dir}", "dataset=c4_demo", f"dataset_dir={LF_DEMO}"]
    assert main(["data", "prepare", *pt, "streaming=true", "max_steps=5"]) == 2
    assert "a streamed corpus is tokenized as the run reads it" in capsys.readouterr().err
    assert main(["data", "prepare", *pt, f"tokenized_dir={tmp_path / 'blocks'}"]) == 2  # examples only
    assert "'tokenized_dir' holds a stage's encoded examples; 'stage: pt' tokenizes" in capsys.readouterr().err


def test_a_tokenized_dir_trains_without_the_raw_data_and_refuses_other_settings(real_model, tmp_path, capsys):
    """As LLaMA-Factory's tokenized_path: prepared on one machine, read on another that lacks the raw data."""
    import json
    import shutil

    import pytest

    from lmforge.errors import DataError
    from lmforge.train.stage_data import chat_examples

    raw = tmp_path / "raw"
    raw.mkdir()
    # LLaMA-Factory's preference demo, with its registry entry, and Llama 3.2's own tokenizer and template
    demo = json.loads((LF_DEMO / "dataset_info.json").read_text())["dpo_en_demo"]
    shutil.copy(LF_DEMO / demo["file_name"], raw / demo["file_name"])
    (raw / "dataset_info.json").write_text(json.dumps({"pairs": demo}))
    prepared = tmp_path / "prepared"
    prepared.mkdir()  # an empty folder made ahead is fine
    (prepared.parent / "foreign").mkdir()
    (prepared.parent / "foreign" / "notes.txt").write_text("mine")
    overrides = ["stage=dpo", f"model_name_or_path={real_model('llama-3.2-instruct')}", "dataset=pairs",
                 f"dataset_dir={raw}", "cutoff_len=64", "max_samples=100", f"tokenized_dir={prepared}"]
    assert main(["data", "prepare", *overrides]) == 0
    assert f"(tokenized now): {prepared}" in capsys.readouterr().err
    assert (prepared / "prepared.json").is_file()
    built = chat_examples(load_config(None, [*overrides, f"output_dir={tmp_path / 'a'}"])).data

    shutil.rmtree(raw)  # the training machine has no raw data
    data = chat_examples(load_config(None, [*overrides, f"output_dir={tmp_path / 'b'}"])).data
    assert data.from_cache and data.train["chosen_input_ids"] == built.train["chosen_input_ids"]
    assert data.train["rejected_labels"] == built.train["rejected_labels"]
    assert "Reading the prepared pair examples in" in capsys.readouterr().err

    with pytest.raises(DataError, match="prepared with other settings \\(labels differ\\)"):
        chat_examples(load_config(None, [*overrides, "cutoff_len=32", f"output_dir={tmp_path / 'c'}"]))
    with pytest.raises(DataError, match="holds files but no prepared examples"):  # never written over
        chat_examples(load_config(None, [*overrides, f"tokenized_dir={tmp_path / 'foreign'}", "overwrite_cache=true",
                                         f"output_dir={tmp_path / 'd'}"]))
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


NODE_SCRIPT = """
import json, sys
from lmforge.config import load_config
from lmforge.train.stage_data import chat_examples
cfg = load_config(None, sys.argv[1:])
data = chat_examples(cfg).data
print(json.dumps({"from_cache": data.from_cache, "examples": len(data.train)}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("shared", [True, False], ids=["shared filesystem", "a disk per node"])
def test_one_process_prepares_per_filesystem_across_nodes(real_model, tmp_path, shared):
    """Two machines of one process each (gloo): with the cache on a filesystem both see, the first process prepares
    and the other reads what it wrote; with a cache on each machine's own disk, each machine's first process
    prepares."""
    import json
    import socket
    import subprocess
    import sys

    from tests.conftest import REPO

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    overrides = ["stage=sft", f"model_name_or_path={real_model('qwen3')}", "dataset=alpaca_en_demo",
                 f"dataset_dir={LF_DEMO}", "cutoff_len=64", "max_samples=50",
                 f"output_dir={tmp_path / 'run'}"]
    nodes = []
    for rank in range(2):
        cache = tmp_path / ("cache" if shared else f"cache-node{rank}")
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "LMFORGE_CACHE": str(cache),
               "OMP_NUM_THREADS": "1"}
        nodes.append(subprocess.Popen([sys.executable, "-c", NODE_SCRIPT, *overrides], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for node in nodes:
        out, err = node.communicate(timeout=600)
        assert node.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0]["examples"] == results[1]["examples"] > 0
    # shared: the second machine read the first one's cache; separate disks: each prepared its own
    assert [r["from_cache"] for r in results] == ([False, True] if shared else [False, False])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("cache")) == (
        ["cache"] if shared else ["cache-node0", "cache-node1"])
    assert not list(tmp_path.glob("cache*/.lmforge-shared-probe-*"))  # the probe is removed


@pytest.mark.slow
def test_bench_prepare_times_a_cold_preparation_and_its_memory(real_model, tmp_path, capsys):
    from tests.conftest import write_jsonl

    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": f"document {i} " + "word " * (i % 50)}
                                                     for i in range(400)])
    overrides = ["stage=pt", f"model_name_or_path={real_model('qwen3')}", f"dataset={corpus}",
                 "allow_absolute_file_name=true", "cutoff_len=32"]
    assert main(["bench", "--prepare", *overrides, "--repeats", "2", "--json", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr().out
    import json

    result = json.loads((tmp_path / "r.json").read_text())
    assert len(result["runs"]) == 2 and all(not r["seconds"] < result["best"]["seconds"] for r in result["runs"])
    # both cold (a fresh cache each): the same blocks, and they are what the corpus holds
    words = sum(2 + i % 50 for i in range(400))
    assert {r["train_rows"] for r in result["runs"]} == {result["best"]["train_rows"]} and (
        result["best"]["train_rows"] == result["best"]["train_tokens"] // 32 > words // 32 // 2)
    assert 0 < result["best"]["peak_anonymous_mib"] <= result["best"]["peak_resident_mib"]
    assert f"{result['best']['train_rows']:,} rows" in printed
