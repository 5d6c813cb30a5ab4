import json

import pytest

from lmforge.data.formats import ConversationFormat, normalise_records
from tests.conftest import LF_DEMO

REGISTRY = json.loads((LF_DEMO / "dataset_info.json").read_text())


@pytest.mark.parametrize("name", ["identity", "alpaca_en_demo", "alpaca_zh_demo", "glaive_toolcall_en_demo",
                                  "glaive_toolcall_zh_demo", "kto_en_demo"])
def test_llamafactory_conversation_datasets_normalise_without_skips(name):
    entry = REGISTRY[name]
    records = json.loads((LF_DEMO / entry["file_name"]).read_text())
    out, report = normalise_records(records, ConversationFormat.from_entry(entry), name)
    assert report.total == 0, report.summary()
    assert len(out) == len(records)
    assert [i for i, _ in out] == list(range(len(records)))
    for _, example in out:
        roles = [m["role"] for m in example["messages"]]
        assert roles[-1] == "assistant" and roles[0] in ("system", "user")


def test_alpaca_record_becomes_a_conversation():
    fmt = ConversationFormat.from_entry({})
    record = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "system": "Be terse.",
              "history": [["hi", "hello"]]}
    assert fmt.to_example(record) == {"tools": None, "messages": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "Add the numbers.\n2 and 3"}, {"role": "assistant", "content": "5"}]}


def test_sharegpt_function_calls_and_observations_become_tool_turns():
    entry = REGISTRY["glaive_toolcall_en_demo"]
    records = json.loads((LF_DEMO / entry["file_name"]).read_text())
    with_call = next(r for r in records if any(m["from"] == "function_call" for m in r["conversations"]))
    example = ConversationFormat.from_entry(entry).to_example(with_call)
    call = next(m for m in example["messages"] if m.get("tool_calls"))
    raw = json.loads(next(m["value"] for m in with_call["conversations"] if m["from"] == "function_call"))
    assert call["tool_calls"] == [{"type": "function", "function": {"name": raw["name"],
                                                                     "arguments": raw["arguments"]}}]
    assert any(m["role"] == "tool" for m in example["messages"])
    assert example["tools"][0]["type"] == "function" and "name" in example["tools"][0]["function"]


def test_malformed_records_are_skipped_with_counted_reasons():
    fmt = ConversationFormat.from_entry({"formatting": "sharegpt"})
    records = [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "human", "value": "again"}]},
        {"conversations": [{"from": "alien", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "   "}]},
        {"conversations": [{"from": "human", "value": 42}, {"from": "gpt", "value": "x"}]},
        {"conversations": [{"from": "human", "value": "hi"}]},
        "not an object",
        {"conversations": []},
    ]
    out, report = normalise_records(records, fmt, "bad.json")
    assert len(out) == 1 and report.total == 7
    summary = report.summary()
    assert "bad.json: skipped 7 records" in summary
    assert "turns must alternate user/assistant" in summary and "(records 1)" in summary
    assert "role 'alien'" in summary
    assert "turn 1 (assistant) is empty" in summary
    assert "must be a string, got int" in summary
    assert "needs at least one user turn and one assistant turn" in summary
    assert "record is not an object" in summary


def test_openai_messages_with_tool_calls_pass_through():
    fmt = ConversationFormat.from_entry({"formatting": "openai"})
    call = [{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]
    record = {"messages": [{"role": "user", "content": "call f"},
                           {"role": "assistant", "content": "", "tool_calls": call},
                           {"role": "tool", "content": "{\"y\": 2}"},
                           {"role": "assistant", "content": "y is 2"}],
              "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}
    out = fmt.to_example(record)
    assert out["messages"][1]["tool_calls"] == call and out["messages"][2]["role"] == "tool"
    assert out["tools"] == record["tools"]
