"""The streamed pretraining corpus: lazily read, interleaved by ratios, shuffled through a buffer, and resumable
mid-stream from a stored position without reading, repeating or skipping a document."""

import json
import re
from collections import Counter

import pytest

from lmforge.data.loading import load_texts
from lmforge.data.stream import BlockStream
from tests.conftest import write_jsonl

N_A, N_B = 240, 120


@pytest.fixture
def sources(tmp_path):
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    for name, n in (("a", N_A), ("b", N_B)):
        write_jsonl(tmp_path / f"{name}.jsonl", [
            {"text": f"<{name}{i:04d}> " + " ".join(words[(i + k) % 8] for k in range(i % 9))} for i in range(n)])
    return f"{tmp_path / 'a.jsonl'},{tmp_path / 'b.jsonl'}"


def stream(sources, tokenizer, positions=False, mix="interleave_over") -> BlockStream:
    probs = [0.7, 0.3] if mix != "concat" else None
    docs = load_texts(sources, ".", streaming=True, mix_strategy=mix, interleave_probs=probs, seed=11)
    return BlockStream(docs, tokenizer, cutoff_len=24, buffer_size=16, seed=5, positions=positions,
                       blocks_per_step=4)


def as_lists(blocks) -> list[dict]:
    return [{k: v.tolist() for k, v in b.items()} for b in blocks]


def take(it, n: int) -> list:
    return [next(it) for _ in range(n)]


def doc_ids(tokenizer, blocks) -> Counter:
    text = tokenizer.decode([t for b in blocks for t in b["input_ids"]])
    return Counter(re.findall(r"<([ab]\d{4})>", text))


@pytest.mark.parametrize("positions", [False, True])
def test_a_resumed_stream_continues_exactly_where_the_position_was_taken(sources, tiny_tokenizer, positions):
    whole = stream(sources, tiny_tokenizer, positions)
    full = as_lists(whole)
    assert len(full) > 100

    first = stream(sources, tiny_tokenizer, positions)
    it = iter(first)
    head = as_lists(take(it, 40))
    position = json.loads(json.dumps(first.position(40)))  # as stored in a checkpoint
    assert position["blocks"] == 40 and first.position(41) is None  # only step boundaries (4 blocks) are kept

    resumed = stream(sources, tiny_tokenizer, positions)
    resumed.restore(position)
    tail = as_lists(resumed)
    assert head + tail == full
    # the resumed stream read only the documents not read before the position (nothing re-read from the start)
    assert resumed.documents_read == whole.documents_read - position["documents"]
    assert resumed.blocks == len(full)


def test_every_document_is_trained_once_in_a_shuffled_order(sources, tiny_tokenizer):
    blocks = as_lists(stream(sources, tiny_tokenizer, mix="concat"))
    seen = doc_ids(tiny_tokenizer, blocks)
    assert max(seen.values()) == 1
    everything = {f"a{i:04d}" for i in range(N_A)} | {f"b{i:04d}" for i in range(N_B)}
    assert len(everything - set(seen)) <= 1  # at most the document in the final partial block
    order = re.findall(r"<([ab]\d{4})>", tiny_tokenizer.decode([t for b in blocks for t in b["input_ids"]]))
    assert order != sorted(order)


def test_sources_are_interleaved_by_their_ratios(sources, tiny_tokenizer):
    blocks = as_lists(stream(sources, tiny_tokenizer))
    order = re.findall(r"<([ab]\d{4})>", tiny_tokenizer.decode([t for b in blocks for t in b["input_ids"]]))
    share_b = sum(x.startswith("b") for x in order[:200]) / 200
    assert 0.2 < share_b < 0.4  # 0.3 asked


def test_streaming_with_dataloader_workers_is_a_clear_error(tmp_path, capsys):
    from lmforge.cli import main

    args = ["stage=pt", "model_name_or_path=m", "dataset=x", f"output_dir={tmp_path}", "streaming=true",
            "max_steps=3", "dataloader_num_workers=2"]
    assert main(["train", *args]) == 2
    assert "with 'streaming: true', set 'dataloader_num_workers: 0'" in capsys.readouterr().err
