"""The SFT data pipeline on real LLaMA-Factory data: every layout loads, ids equal the template's rendering, labels
are exactly the assistant turns, bad records are counted, the cache is reused."""

import copy
import json

import pytest

from lmforge.data.collate import IGNORE_INDEX
from lmforge.data.encode import prepare_messages
from lmforge.data.examples import build_examples
from lmforge.data.template import render_conversation
from lmforge.errors import DataError
from lmforge.train.preview import trained_runs
from tests.conftest import LF_DEMO, REPO, write_jsonl
from tests.data.conftest import data_args

SFT_DATASETS = ["identity", "alpaca_en_demo", "alpaca_zh_demo", "glaive_toolcall_en_demo", "glaive_toolcall_zh_demo",
                "kto_en_demo", str(LF_DEMO / "reason_tool_use_demo_50.jsonl"), str(LF_DEMO / "v1_sft_demo.jsonl")]


def check_example(tok, row: dict) -> None:
    """Ids are the tokenization of the conversation's rendering; trained tokens cover exactly the assistant spans."""
    conversation = json.loads(row["conversation"])
    messages = prepare_messages(conversation["messages"], tok.chat_template, enable_thinking=True)
    rendered = render_conversation(tok, messages, conversation.get("tools"))
    assert row["input_ids"] == tok(rendered.text, add_special_tokens=False)["input_ids"]
    trained = "".join(tok.decode(run, skip_special_tokens=False)
                      for is_trained, run in trained_runs(row["input_ids"], row["labels"]) if is_trained)
    expected = "".join(rendered.text[s:e] for s, e in rendered.assistant_spans)
    assert trained.replace(" ", "") == expected.replace(" ", "")  # a BPE token may carry a leading space


@pytest.mark.parametrize("dataset", SFT_DATASETS)
def test_every_llamafactory_sft_dataset_encodes_exactly(chat_tok, dataset):
    data = build_examples(data_args(dataset=dataset), chat_tok, seed=0)
    stats = next(iter(data.stats.values()))
    assert stats["records"] == 40 and stats["skipped"] == 0 and len(data.train) == 40
    checked = [row for row in data.train.select(range(10)) if not row["truncated"]]
    assert checked
    for row in checked:
        check_example(chat_tok, row)


def test_tool_calls_and_reasoning_are_trained(chat_tok):
    data = build_examples(data_args(dataset=str(LF_DEMO / "reason_tool_use_demo_50.jsonl")), chat_tok, seed=0)
    trained = [chat_tok.decode([t for t, lab in zip(r["input_ids"], r["labels"], strict=True) if lab != IGNORE_INDEX],
                               skip_special_tokens=False) for r in data.train]
    assert any("<tool_call>" in t and '"arguments"' in t for t in trained)
    # chatml has no reasoning field: the reasoning is folded into the content in <think> tags and trained with it
    assert any(t.startswith("<think>\n") and "</think>" in t for t in trained)
    off = build_examples(data_args(dataset=str(LF_DEMO / "reason_tool_use_demo_50.jsonl"), enable_thinking=False),
                         chat_tok, seed=0)
    assert not any("<think>" in chat_tok.decode(r["input_ids"]) for r in off.train)


def test_mixed_sources_max_samples_and_val_size(chat_tok):
    data = build_examples(data_args(dataset="alpaca_en_demo,glaive_toolcall_en_demo", max_samples=30, val_size=0.2),
                          chat_tok, seed=0)
    assert len(data.train) + len(data.eval) == 60 and len(data.eval) == 12
    assert set(data.train["source"]) == {"alpaca_en_demo", "glaive_toolcall_en_demo"}


def test_label_options_change_what_is_trained(chat_tok):
    def trained_tokens(**kw):
        data = build_examples(data_args(dataset="glaive_toolcall_en_demo", max_samples=20, **kw), chat_tok, seed=0)
        return sum(lab != IGNORE_INDEX for row in data.train["labels"] for lab in row)

    everything, last_only, all_tokens = trained_tokens(), trained_tokens(mask_history=True), \
        trained_tokens(train_on_prompt=True)
    assert last_only < everything < all_tokens


def test_truncation_is_counted_and_untrainable_examples_skipped(chat_tok):
    data = build_examples(data_args(dataset="glaive_toolcall_en_demo", cutoff_len=200), chat_tok, seed=0)
    stats = data.stats["glaive_toolcall_en_demo"]
    assert stats["truncated"] > 0 and stats["skipped"] > 0
    assert stats["examples"] + stats["skipped"] == stats["records"]
    assert all(len(ids) <= 200 for ids in data.train["input_ids"])
    assert all(any(lab != IGNORE_INDEX for lab in labels) for labels in data.train["labels"])


def test_malformed_records_are_skipped_and_counted_by_reason(chat_tok, tmp_path, caplog):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    records = [
        good,
        {"messages": [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]},
        {"messages": [{"role": "user", "content": ["not", "parts"]}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": {"a": 1}}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}]},
        {"messages": "nope"},
        [1, 2],
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", records)
    data = build_examples(data_args(dataset=str(path), dataset_dir=str(tmp_path)), chat_tok, seed=0)
    stats = data.stats[str(path)]
    assert len(data.train) == 1 and stats["skipped"] == len(records) - 1 and stats["records"] == len(records)
    assert "skipped 8 records" in caplog.text


def test_bad_json_line_names_file_and_line(chat_tok, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": \n')
    with pytest.raises(DataError, match=r"bad.jsonl' line 2: not valid JSON"):
        build_examples(data_args(dataset=str(path), dataset_dir=str(tmp_path)), chat_tok, seed=0)


def test_data_that_is_not_conversations_is_rejected_with_its_fields(chat_tok, tmp_path):
    path = write_jsonl(tmp_path / "corpus.jsonl", [{"text": "just text"}])
    with pytest.raises(DataError, match="does not look like conversation data: its records have fields text"):
        build_examples(data_args(dataset=str(path)), chat_tok, seed=0)
    # a pretraining entry of dataset_info.json read as alpaca: no record has an answer
    with pytest.raises(DataError, match="c4_demo': none of its 40 records is a usable conversation.*is empty"):
        build_examples(data_args(dataset="c4_demo"), chat_tok, seed=0)


def test_encoded_data_is_cached(chat_tok, caplog):
    first = build_examples(data_args(dataset="identity"), chat_tok, seed=0)
    second = build_examples(data_args(dataset="identity"), chat_tok, seed=0)
    assert not first.from_cache and second.from_cache
    assert first.train["input_ids"] == second.train["input_ids"]
    third = build_examples(data_args(dataset="identity", mask_history=True), chat_tok, seed=0)
    assert not third.from_cache


def test_the_cache_misses_on_a_changed_tokenizer_template_or_encoding_code(chat_tok, monkeypatch):
    from lmforge.data import cache

    assert not build_examples(data_args(dataset="identity"), chat_tok, seed=0).from_cache
    assert build_examples(data_args(dataset="identity"), chat_tok, seed=0).from_cache
    other_template = copy.deepcopy(chat_tok)
    other_template.chat_template = chat_tok.chat_template.replace("<|im_start|>", "<|im_start|> ")
    changed = build_examples(data_args(dataset="identity"), other_template, seed=0)
    assert not changed.from_cache
    other_vocab = copy.deepcopy(chat_tok)
    other_vocab.add_tokens(["<extra_token>"])
    assert not build_examples(data_args(dataset="identity"), other_vocab, seed=0).from_cache
    # an lmforge whose encoding code differs (an upgrade) does not trust what the old code cached
    monkeypatch.setattr(cache, "code_identity", lambda: {"lmforge": "9.9", "encoding_code": "changed"})
    assert not build_examples(data_args(dataset="identity"), chat_tok, seed=0).from_cache
    assert cache.ENCODING_MODULES and all(m.split(".")[0] in ("data", "model") for m in cache.ENCODING_MODULES)


def test_hub_sources_are_keyed_by_their_resolved_revision(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from lmforge.data.cache import source_identity
    from lmforge.data.registry import SourceSpec, hub_lookup

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    spec = SourceSpec(name="org/data", kind="hub", path="org/data")
    hub_lookup.cache_clear()
    assert source_identity(spec)["revision"] is None
    hub_lookup.cache_clear()
    refs = tmp_path / "datasets--org--data" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("1111aaaa")
    first = source_identity(spec)
    (refs / "main").write_text("2222bbbb")  # the dataset was updated on the hub and downloaded again
    hub_lookup.cache_clear()  # (a later run)
    assert first["revision"] == "1111aaaa" and source_identity(spec)["revision"] == "2222bbbb"


@pytest.mark.slow
@pytest.mark.parametrize("template", ["chatml", str(REPO / "tests" / "data" / "templates" / "qwen3.jinja")])
@pytest.mark.parametrize("options", [dict(cutoff_len=4096), dict(cutoff_len=96), dict(cutoff_len=4096,
                                                                                       mask_history=True)])
def test_the_batched_encoder_equals_encoding_one_example_at_a_time(tiny_tokenizer, template, options):
    """The fast path (rendered one by one, tokenized in one call, labels from offsets) changes no id, label or skip."""
    import copy

    from lmforge.data.chat_templates import apply_template_choice
    from lmforge.data.encode import ConversationEncoder, LabelOptions
    from lmforge.data.formats import SkipRecord

    tok = copy.deepcopy(tiny_tokenizer)
    apply_template_choice(tok, template)
    encoder = ConversationEncoder(tok, LabelOptions(**options))
    for dataset in SFT_DATASETS:
        data = build_examples(data_args(dataset=dataset), tok, seed=0)
        conversations = [json.loads(c) for c in data.train["conversation"]]
        batched = encoder.encode_batch(conversations)
        for conversation, fast in zip(conversations, batched, strict=True):
            try:
                slow = encoder.encode_one(conversation)
            except SkipRecord as err:
                assert isinstance(fast, SkipRecord) and str(fast) == str(err)
                continue
            assert fast == slow, dataset


def test_json_lines_split_on_newlines_only(chat_tok, tmp_path):
    """U+2028/U+2029/U+0085 are legal raw inside JSON strings: records keep them and line numbers stay right."""
    odd = "line\u2028separator\u2029paragraph\u0085next\x1crecord"
    records = [{"instruction": f"Say {odd}", "output": f"Said {odd}"}, {"instruction": "Hi", "output": "Hello"}]
    path = tmp_path / "odd.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    data = build_examples(data_args(dataset=str(path), dataset_dir=str(tmp_path)), chat_tok, seed=0)
    assert len(data.train) == 2
    assert any(odd in json.loads(c)["messages"][0]["content"] for c in data.train["conversation"])
    path.write_text(path.read_text(encoding="utf-8") + "{broken\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"odd.jsonl' line 3: not valid JSON"):
        build_examples(data_args(dataset=str(path), dataset_dir=str(tmp_path)), chat_tok, seed=0)
