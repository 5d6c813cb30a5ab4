import os

import numpy as np
import pytest

from lmforge.config.data import DataArguments
from lmforge.data.chunking import BlockChunker, DocumentTokenizer, document_affixes
from lmforge.data.pretrain import build_pretrain_data
from lmforge.errors import DataError
from tests.conftest import LF_DEMO, write_jsonl

DOCS = ["The cat sat on the mat.", "", "Two plus two is four. Four plus four is eight.", "Hi.",
        "A much longer document that keeps going and going, so that it spans more than one block of tokens, "
        "and then a bit more."] * 7


def expected_stream(tokenizer, docs):
    ids = []
    for d in docs:
        if d:
            ids += tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return ids


@pytest.fixture
def corpus(tmp_path):
    return str(write_jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in DOCS]))


@pytest.mark.parametrize("workers", [None, 2])
def test_blocks_are_the_tokenized_corpus_with_eos_between_documents(corpus, tmp_path, tiny_tokenizer, workers):
    args = DataArguments(dataset=corpus, dataset_dir=str(tmp_path), cutoff_len=16, preprocessing_batch_size=3,
                         preprocessing_num_workers=workers)
    data = build_pretrain_data(args, tiny_tokenizer, seed=0)
    stream = expected_stream(tiny_tokenizer, DOCS)
    n_blocks = len(stream) // 16
    assert len(data.train) == n_blocks
    flat = [t for block in data.train["input_ids"] for t in block]
    assert flat == stream[: n_blocks * 16]
    assert data.stats["train"]["dropped_tokens"] == len(stream) - n_blocks * 16
    assert data.stats["train"]["empty_documents"] == DOCS.count("")
    assert data.stats["train"]["documents"] == len(DOCS)
    assert data.eval is None


def test_neat_packing_positions_restart_at_each_document_and_block(corpus, tmp_path, tiny_tokenizer):
    args = DataArguments(dataset=corpus, dataset_dir=str(tmp_path), cutoff_len=16, preprocessing_batch_size=2,
                         neat_packing=True)
    data = build_pretrain_data(args, tiny_tokenizer, seed=0)
    positions = []
    for d in DOCS:
        if d:
            n = len(tiny_tokenizer(d, add_special_tokens=False)["input_ids"]) + 1
            positions += list(range(n))
    positions = np.array(positions[: len(data.train) * 16]).reshape(-1, 16)
    # A document cut by a block boundary continues at 0 in the next block.
    for row in positions:
        if row[0] != 0:
            head = np.cumsum(row == 0) == 0
            row[head] -= row[0]
    assert np.array_equal(np.array(data.train["position_ids"]), positions)
    eos = tiny_tokenizer.eos_token_id
    ids = np.array(data.train["input_ids"])
    # every position-0 token (except block starts) follows an EOS: documents are delimited as in the stream
    starts = np.argwhere(positions[:, 1:] == 0)
    assert all(ids[r, c] == eos for r, c in starts)


def test_validation_split_is_tokenized_separately(corpus, tmp_path, tiny_tokenizer):
    args = DataArguments(dataset=corpus, dataset_dir=str(tmp_path), cutoff_len=8, val_size=5)
    data = build_pretrain_data(args, tiny_tokenizer, seed=0)
    assert data.stats["eval"]["documents"] == 5
    assert data.stats["train"]["documents"] == len(DOCS) - 5
    assert len(data.eval) > 0


def test_second_run_reuses_the_cache_without_tokenizing(corpus, tmp_path, tiny_tokenizer, monkeypatch, caplog):
    args = DataArguments(dataset=corpus, dataset_dir=str(tmp_path), cutoff_len=16)
    first = build_pretrain_data(args, tiny_tokenizer, seed=0)
    assert not first.from_cache

    def refuse(*a, **k):
        raise AssertionError("tokenized again despite a cache hit")

    monkeypatch.setattr(DocumentTokenizer, "__call__", refuse)
    with caplog.at_level("INFO", logger="lmforge"):
        second = build_pretrain_data(args, tiny_tokenizer, seed=0)
    assert second.from_cache
    assert "tokenization skipped" in caplog.text
    assert list(second.train["input_ids"]) == list(first.train["input_ids"])
    monkeypatch.undo()

    # anything that changes the result changes the key: settings, the source's content, the tokenizer
    assert not build_pretrain_data(DataArguments(dataset=corpus, dataset_dir=str(tmp_path), cutoff_len=8),
                                   tiny_tokenizer, seed=0).from_cache
    stat = os.stat(corpus)
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert not build_pretrain_data(args, tiny_tokenizer, seed=0).from_cache
    assert not build_pretrain_data(DataArguments(dataset=corpus, dataset_dir=str(tmp_path), cutoff_len=16,
                                                 overwrite_cache=True), tiny_tokenizer, seed=0).from_cache


def test_a_failed_build_leaves_no_cache_entry(tmp_path, tiny_tokenizer, isolated_cache):
    path = write_jsonl(tmp_path / "short.jsonl", [{"text": "tiny"}])
    args = DataArguments(dataset=str(path), dataset_dir=str(tmp_path), cutoff_len=512)
    with pytest.raises(DataError, match="fewer than one block of cutoff_len=512"):
        build_pretrain_data(args, tiny_tokenizer, seed=0)
    assert os.listdir(isolated_cache / "pt") == []


def test_streaming_yields_the_same_blocks(corpus, tmp_path, tiny_tokenizer):
    args = DataArguments(dataset=corpus, dataset_dir=str(tmp_path), cutoff_len=16, streaming=True,
                         preprocessing_batch_size=4)
    data = build_pretrain_data(args, tiny_tokenizer, seed=0)
    blocks = [list(map(int, b["input_ids"])) for b in data.train]
    stream = expected_stream(tiny_tokenizer, DOCS)
    # streaming shuffles documents through a buffer: the same tokens (less the final partial block) in full blocks
    from collections import Counter

    assert all(len(b) == 16 for b in blocks)
    assert len(blocks) == len(stream) // 16
    got, want = Counter(t for b in blocks for t in b), Counter(stream)
    assert not got - want
    assert sum((want - got).values()) == len(stream) % 16


def test_chunker_carries_leftovers_across_batches():
    chunker = BlockChunker(4, positions=True)
    out1 = chunker({"input_ids": [[1, 2, 3], [4, 5, 6, 7, 8], []]})
    out2 = chunker({"input_ids": [[9, 10, 11]]})
    assert [list(b) for b in out1["input_ids"]] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert [list(p) for p in out1["position_ids"]] == [[0, 1, 2, 0], [0, 1, 2, 3]]
    assert out2["input_ids"].shape == (0, 4) and out1["input_ids"].dtype == "int32" and chunker.remainder == 3
    assert chunker.stats.documents == 4 and chunker.stats.empty_documents == 1 and chunker.stats.tokens == 11


def test_document_affixes_follow_the_tokenizer(tiny_tokenizer):
    import copy

    from tokenizers.processors import TemplateProcessing

    assert document_affixes(tiny_tokenizer) == ([], [tiny_tokenizer.eos_token_id])
    bos_tok = copy.deepcopy(tiny_tokenizer)
    bos_id = bos_tok.convert_tokens_to_ids("<|im_start|>")
    bos_tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos_id)])
    assert document_affixes(bos_tok) == ([bos_id], [bos_tok.eos_token_id])
    out = DocumentTokenizer(bos_tok)({"text": ["hi", None, ""]}, [0, 1, 2])
    assert out["input_ids"][0][0] == bos_id and out["input_ids"][0][-1] == bos_tok.eos_token_id
    assert [list(ids) for ids in out["input_ids"][1:]] == [[], []]
    with pytest.raises(DataError, match="record 5: field 'text' must be a string"):
        DocumentTokenizer(bos_tok)({"text": ["ok", 3]}, [4, 5])


@pytest.mark.parametrize("family", ["qwen3", "llama-3.2-instruct", "qwen2.5-instruct", "roberta-base"])
def test_document_ids_are_the_tokenizers_own(real_model, family):
    """The Rust backend asked for ids only gives exactly what the tokenizer's call gives (normalisation, pre-
    tokenization and byte fallback included), on real checkpoints' tokenizers."""
    import json

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(real_model(family))
    with open(os.path.join(LF_DEMO, "c4_demo.jsonl"), encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line, _ in zip(fh, range(200), strict=False)]
    texts += ["  leading and trailing  ", "tabs\tand\nnewlines\r\n", "Émile naïve façade 東京 🙂 \u200b", "a" * 5000]
    document = DocumentTokenizer(tokenizer)
    assert document._encode is not None  # the fast path is the one compared
    expected = tokenizer(texts, add_special_tokens=False)["input_ids"]
    got = document({"text": texts}, list(range(len(texts))))["input_ids"]
    prefix, suffix = document_affixes(tokenizer)
    assert [ids.tolist() for ids in got] == [prefix + ids + suffix for ids in expected]
