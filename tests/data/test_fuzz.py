"""Property-based: no malformed record crashes the data pipeline. Wrong types, nulls, non-object turns, unknown
roles, lone surrogates and huge fields are counted skips naming the record, and every source's accounting holds
(records = examples + skipped), for each layout and each example kind."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.cli import main
from lmforge.data.examples import build_examples
from lmforge.errors import DataError
from tests.conftest import write_jsonl
from tests.data.conftest import data_args

FIELDS = ["instruction", "input", "output", "system", "history", "conversations", "messages", "tools", "chosen",
          "rejected", "label", "from", "value", "role", "content", "tool_calls", "function", "name", "arguments",
          "type", "text", "reasoning_content"]
ODD_TEXT = ["", "hi", "user", "assistant", "human", "gpt", "system", "tool", "observation", "function_call",
            "\ud800", "a\udfffb", "line\u2028sep\u2029par\u0085x", "x" * 20000, "<|im_end|>", "{\"name\": 3}", "true"]
scalars = (st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from(ODD_TEXT) | st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(FIELDS), inner, max_size=4), max_leaves=12)
ROLES = st.sampled_from(["user", "assistant", "system", "tool", "human", "gpt", "observation", "function_call",
                         "wizard", None, 7])
# turns that are nearly right, so records get past the first checks and reach rendering
turns = st.lists(st.one_of(values, st.fixed_dictionaries({"role": ROLES, "content": values}),
                           st.fixed_dictionaries({"from": ROLES, "value": values})), max_size=5)
LAYOUT_FIELDS = {
    "alpaca": {"instruction": values, "input": values, "output": values, "system": values, "history": values,
               "chosen": values, "rejected": values, "label": values},
    "sharegpt": {"conversations": turns | values, "system": values, "tools": values, "chosen": values,
                 "rejected": values, "label": values},
    "openai": {"messages": turns | values, "tools": values, "chosen": values, "rejected": values, "label": values},
}
# a first record that names the layout (detection reads the first record's fields)
ANCHORS = {"alpaca": {"instruction": "Say hi", "output": "Hi", "chosen": "Hi", "rejected": "No", "label": True},
           "sharegpt": {"conversations": [{"from": "human", "value": "Say hi"}, {"from": "gpt", "value": "Hi"}],
                        "chosen": {"from": "gpt", "value": "Hi"}, "rejected": {"from": "gpt", "value": "No"},
                        "label": True},
           "openai": {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi"}],
                      "chosen": "Hi", "rejected": "No", "label": True}}


def records(layout: str):
    record = st.fixed_dictionaries({}, optional=LAYOUT_FIELDS[layout]) | values
    return st.lists(record, min_size=60, max_size=80)


def _check_accounting(path, tokenizer, kind: str, layout: str) -> int:
    try:
        data = build_examples(data_args(dataset=str(path), dataset_dir=str(path.parent), max_samples=None,
                                        cutoff_len=256), tokenizer, seed=0, kind=kind)
    except DataError as err:  # a clear error (e.g. no usable record at all) is allowed; a crash is not
        assert "Data error" in str(err)
        return 0
    [stats] = data.stats.values()
    assert stats["records"] == stats["examples"] + stats["skipped"], stats
    assert stats["skipped"] == sum(stats["skip_reasons"].values())
    return stats["records"]


@pytest.mark.slow
@pytest.mark.parametrize("layout", sorted(LAYOUT_FIELDS))
@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_fuzzed_conversations_are_skipped_and_counted_never_a_crash(chat_tok, tmp_path, layout, data):
    batch = [ANCHORS[layout], *data.draw(records(layout))]
    path = write_jsonl(tmp_path / f"{layout}-{len(batch)}-{abs(hash(json.dumps(batch)))}.jsonl",
                       [json.dumps(r) for r in batch])  # json.dumps escapes lone surrogates: valid JSON
    _check_accounting(path, chat_tok, "sft", layout)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pair", "kto", "prompt"])
@pytest.mark.parametrize("layout", sorted(LAYOUT_FIELDS))
@settings(max_examples=4, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_fuzzed_records_of_every_stage_are_accounted_for(chat_tok, tmp_path, layout, kind, data):
    batch = [ANCHORS[layout], *data.draw(records(layout))]
    path = write_jsonl(tmp_path / f"{layout}-{kind}-{abs(hash(json.dumps(batch)))}.jsonl",
                       [json.dumps(r) for r in batch])
    _check_accounting(path, chat_tok, kind, layout)


def test_data_dump_of_the_records_the_issue_names_ends_cleanly(tiny_model_dir, tmp_path, capsys, caplog):
    """sharegpt `messages` given as a string, a JSON-escaped lone surrogate, tool calls that are not objects."""
    bad = [{"messages": "just a string"}, {"messages": [{"role": "user", "content": "\ud800"},
                                                        {"role": "assistant", "content": "ok"}]},
           {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "",
                                                              "tool_calls": ["not an object"]}]},
           {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "fine"}]}]
    path = write_jsonl(tmp_path / "bad.jsonl", [json.dumps(r) for r in bad])
    dump = tmp_path / "dump.jsonl"
    code = main(["data", "dump", "stage=sft", f"model_name_or_path={tiny_model_dir}", "template=chatml",
                 f"dataset={path}", "cutoff_len=64", "--output", str(dump)])
    assert code == 0, capsys.readouterr().err
    assert len(dump.read_text().splitlines()) == 1
    err = caplog.text
    assert "skipped 3 records" in err and "lone surrogate U+D800) (records 1)" in err
    assert "'tool_calls' must be a list of objects (records 2)" in err


def test_deeply_nested_json_is_a_clear_error_or_a_skip(chat_tok, tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / "deep.jsonl"
    path.write_text('{"instruction": "Hi", "output": "Hello"}\n{"instruction": ' + deep + ', "output": "x"}\n')
    with pytest.raises(DataError, match=r"deep.jsonl' line 2: JSON nested deeper than 256 levels"):
        build_examples(data_args(dataset=str(path), dataset_dir=str(tmp_path)), chat_tok, seed=0)
    nested: list = []
    for _ in range(250):  # deep enough to trouble a template, within the reader's bound
        nested = [nested]
    path = write_jsonl(tmp_path / "nested.jsonl", [ANCHORS["alpaca"], {"instruction": nested, "output": "x"}])
    data = build_examples(data_args(dataset=str(path), dataset_dir=str(tmp_path)), chat_tok, seed=0)
    [stats] = data.stats.values()
    assert stats["records"] == 2 and stats["examples"] + stats["skipped"] == 2
