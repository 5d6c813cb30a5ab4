import json

import datasets
import pytest

from lmforge.data.loading import load_texts, split_validation
from lmforge.data.registry import resolve_sources
from lmforge.errors import DataError
from tests.conftest import LF_DEMO, write_jsonl


def test_llamafactory_registry_loads_c4_and_wiki_demo_unchanged():
    c4 = load_texts("c4_demo", str(LF_DEMO))
    wiki = load_texts("wiki_demo", str(LF_DEMO))
    with open(LF_DEMO / "c4_demo.jsonl", encoding="utf-8") as fh:
        expected_c4 = [json.loads(line)["text"] for line in fh]
    with open(LF_DEMO / "wiki_demo.txt", encoding="utf-8") as fh:
        expected_wiki = fh.read().splitlines()
    assert c4.column_names == ["text"] and c4["text"] == expected_c4
    assert wiki["text"] == expected_wiki
    both = load_texts("c4_demo, wiki_demo", str(LF_DEMO))
    assert len(both) == len(expected_c4) + len(expected_wiki)


def test_builtin_quickstart_corpus_resolves_from_any_dataset_dir(tmp_path):
    (spec,) = resolve_sources("lmforge_quickstart", str(tmp_path))
    assert spec.kind == "file" and spec.path.endswith("quickstart_corpus.jsonl")


@pytest.fixture
def corpus_files(tmp_path):
    texts = [f"document number {i} says hello" for i in range(10)]
    (tmp_path / "a.txt").write_text("\n".join(texts) + "\n")
    write_jsonl(tmp_path / "a.jsonl", [{"text": t, "meta": i} for i, t in enumerate(texts)])
    (tmp_path / "a.json").write_text(json.dumps([{"content": t} for t in texts]))
    datasets.Dataset.from_dict({"text": texts}).to_csv(str(tmp_path / "a.csv"), index=False)
    datasets.Dataset.from_dict({"text": texts}).to_parquet(str(tmp_path / "a.parquet"))
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "saved"))
    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "part1.jsonl", [{"text": t} for t in texts[:5]])
    write_jsonl(folder / "part2.jsonl", [{"text": t} for t in texts[5:]])
    return tmp_path, texts


@pytest.mark.parametrize("name", ["a.txt", "a.jsonl", "a.csv", "a.parquet", "saved", "folder"])
def test_every_local_format_loads(corpus_files, name):
    root, texts = corpus_files
    ds = load_texts(str(root / name), str(root))
    assert ds.column_names == ["text"]
    assert ds["text"] == texts


def test_text_column_and_relative_to_dataset_dir(corpus_files):
    root, texts = corpus_files
    assert load_texts("a.json", str(root), text_column="content")["text"] == texts


def test_registry_entry_with_custom_column_and_num_samples(corpus_files):
    root, texts = corpus_files
    (root / "dataset_info.json").write_text(json.dumps({
        "mine": {"file_name": "a.json", "columns": {"prompt": "content"}},
        "few": {"file_name": "a.jsonl", "num_samples": 4},
    }))
    assert load_texts("mine", str(root))["text"] == texts
    few = load_texts("few", str(root))
    assert len(few) == 4 and set(few["text"]) <= set(texts)


def test_max_samples_and_interleaving(corpus_files):
    root, texts = corpus_files
    assert load_texts("a.jsonl", str(root), max_samples=3)["text"] == texts[:3]
    mixed = load_texts("a.jsonl,a.txt", str(root), mix_strategy="interleave_over", interleave_probs=[0.5, 0.5])
    assert set(mixed["text"]) == set(texts)
    streamed = load_texts("a.jsonl,a.txt", str(root), streaming=True, mix_strategy="interleave_under",
                          interleave_probs=[1, 1])
    assert isinstance(streamed, datasets.IterableDataset)
    assert {r["text"] for r in streamed} <= set(texts)


def test_val_size_fraction_and_count_hold_out_whole_documents(corpus_files):
    root, texts = corpus_files
    ds = load_texts("a.jsonl", str(root))
    frac = split_validation(ds, 0.2, seed=1)
    assert len(frac.eval) == 2 and len(frac.train) == 8
    assert sorted(list(frac.train["text"]) + list(frac.eval["text"])) == sorted(texts)
    count = split_validation(ds, 3, seed=1)
    assert len(count.eval) == 3
    with pytest.raises(DataError, match="would hold out all"):
        split_validation(ds, 10, seed=1)


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, {"text": "fine"}, '{"text": "broken",'])
    with pytest.raises(DataError) as err:
        load_texts(str(path), str(tmp_path))
    assert "bad.jsonl' line 3: invalid JSON" in str(err.value)


def test_wrong_field_type_names_record_and_field(tmp_path):
    path = write_jsonl(tmp_path / "typed.jsonl", [{"text": "ok"}, {"text": "fine"}, {"text": 42}])
    with pytest.raises(DataError) as err:
        load_texts(str(path), str(tmp_path))
    assert "typed.jsonl' line 3: field 'text' must be a string, got int" in str(err.value)
    path = write_jsonl(tmp_path / "alltyped.jsonl", [{"text": 1}, {"text": 2}])
    with pytest.raises(DataError, match="alltyped.jsonl' line 1: field 'text' must be a string"):
        load_texts(str(path), str(tmp_path))


def test_missing_column_lists_the_columns(tmp_path):
    path = write_jsonl(tmp_path / "cols.jsonl", [{"body": "x", "title": "y"}])
    with pytest.raises(DataError) as err:
        load_texts(str(path), str(tmp_path))
    assert "no column 'text' (columns: body, title)" in str(err.value)


def test_missing_files_bad_extensions_and_offline_hub_ids(tmp_path):
    with pytest.raises(DataError, match="looks like a file but does not exist"):
        load_texts("nothere.jsonl", str(tmp_path))
    (tmp_path / "x.docx").write_text("x")
    with pytest.raises(DataError, match="unsupported extension '.docx'"):
        load_texts(str(tmp_path / "x.docx"), str(tmp_path))
    with pytest.raises(DataError) as err:  # offline: at once, not after datasets' retries
        load_texts("someone/no-such-dataset", str(tmp_path))
    assert str(err.value) == (f"Data error: source 'someone/no-such-dataset' is not in {tmp_path}/dataset_info.json "
                              "nor lmforge's registry, and not a local path; it cannot be looked up on the hub as a "
                              "dataset id (HF_HUB_OFFLINE is set).")


def test_a_mistyped_registry_name_is_suggested_and_an_unreachable_hub_fails_at_once(monkeypatch):
    from huggingface_hub import constants

    from lmforge.data.registry import hub_lookup

    with pytest.raises(DataError, match="HF_HUB_OFFLINE is set\\)\\. Did you mean 'alpaca_en_demo'\\?"):
        load_texts("alpaca_en_dem", str(LF_DEMO))
    with pytest.raises(DataError, match="Did you mean 'lmforge_quickstart'\\?"):  # lmforge's own registry
        load_texts("lmforge_quickstrat", str(LF_DEMO))
    # online, with the hub out of reach (a closed loopback port): one error, with the transport's reason
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    hub_lookup.cache_clear()
    try:
        with pytest.raises(DataError) as err:
            load_texts("alpaca_en_dem", str(LF_DEMO))
    finally:
        hub_lookup.cache_clear()
    assert "the hub, where it would be looked up as a dataset id, cannot be reached (" in str(err.value)
    assert str(err.value).endswith("Did you mean 'alpaca_en_demo'?")


def test_broken_registry_entries(tmp_path):
    (tmp_path / "dataset_info.json").write_text('{"a": {"file_name": "gone.json"}, "b": {"ms_hub_url": "x/y"},')
    with pytest.raises(DataError, match="dataset_info.json' is not valid JSON"):
        load_texts("a", str(tmp_path))
    (tmp_path / "dataset_info.json").write_text('{"a": {"file_name": "gone.json"}, "b": {"ms_hub_url": "x/y"}}')
    with pytest.raises(DataError, match="names file_name 'gone.json'"):
        load_texts("a", str(tmp_path))
    with pytest.raises(DataError, match="only has ms_hub_url"):
        load_texts("b", str(tmp_path))


def test_malformed_csv_and_non_utf8_text_are_named(tmp_path):
    bad_csv = tmp_path / "rows.csv"
    bad_csv.write_text('text,source\n"fine",a\n"broken",b,extra,fields\n')
    with pytest.raises(DataError) as err:
        load_texts(str(bad_csv), str(tmp_path))
    assert "rows.csv' line 3: 4 fields, but the header has 2" in str(err.value)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.txt' line 1: not UTF-8 text \(byte 3 of it"):
        load_texts(str(latin), str(tmp_path))
