"""Preference, KTO and prompt data through the same pipeline as SFT: every layout loads, the chosen and rejected
sequences share the prompt's ids and train exactly their reply, bad pairs are skipped with a reason."""

import json

import pytest

from lmforge.data.collate import IGNORE_INDEX, KtoCollator, PairCollator
from lmforge.data.examples import build_examples
from lmforge.data.template import render
from lmforge.errors import DataError
from tests.conftest import LF_DEMO, write_jsonl
from tests.data.conftest import data_args


def trained_text(tok, ids: list[int], labels: list[int]) -> str:
    return tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX],
                      skip_special_tokens=False)


def check_pair(tok, row: dict) -> None:
    """Both sequences are the rendering of prompt + reply; they share the prompt's ids; only the reply and its
    end-of-turn token are trained."""
    example = json.loads(row["conversation"])
    for side in ("chosen", "rejected"):
        ids, labels = row[f"{side}_input_ids"], row[f"{side}_labels"]
        text = render(tok, example["messages"] + example[side], example.get("tools"))
        assert ids == tok(text, add_special_tokens=False)["input_ids"]
        reply = example[side][-1]["content"]
        assert trained_text(tok, ids, labels).replace(" ", "") == (reply.strip() + "<|im_end|>").replace(" ", "")
    prompt = tok(render(tok, example["messages"], add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    assert row["chosen_input_ids"][:len(prompt)] == row["rejected_input_ids"][:len(prompt)] == prompt


@pytest.mark.parametrize("dataset", ["dpo_en_demo", "dpo_zh_demo", str(LF_DEMO / "v1_dpo_demo.jsonl")])
def test_llamafactory_pair_datasets_encode_exactly(chat_tok, dataset):
    data = build_examples(data_args(dataset=dataset, cutoff_len=20000), chat_tok, seed=0, kind="pair")
    stats = next(iter(data.stats.values()))
    assert stats["skipped"] == 0 and len(data.train) == stats["records"] > 0
    for row in data.train.select(range(min(8, len(data.train)))):
        check_pair(chat_tok, row)


def test_v1_whole_conversations_share_their_start_as_the_prompt(chat_tok):
    data = build_examples(data_args(dataset=str(LF_DEMO / "v1_dpo_demo.jsonl")), chat_tok, seed=0, kind="pair")
    example = json.loads(data.train[0]["conversation"])
    assert [m["role"] for m in example["messages"]] == ["system", "user"]
    assert [m["role"] for m in example["chosen"]] == [m["role"] for m in example["rejected"]] == ["assistant"]


def test_kto_data_keeps_its_labels_and_trains_the_last_reply(chat_tok):
    data = build_examples(data_args(dataset="kto_en_demo", max_samples=None), chat_tok, seed=0, kind="kto")
    raw = json.load(open(LF_DEMO / "kto_en_demo.json"))
    assert [raw[r]["label"] for r in data.train["record"]] == list(data.train["kto_label"])
    assert sum(data.train["kto_label"]) == 150 and len(data.train) == 300
    row = data.train[0]
    reply = raw[row["record"]]["messages"][-1]["content"]
    assert trained_text(chat_tok, row["input_ids"], row["labels"]).replace(" ", "") == \
        (reply.strip() + "<|im_end|>").replace(" ", "")


LAYOUTS = {
    "alpaca ranking": {"instruction": "Name a colour", "input": "of the sky", "chosen": "blue", "rejected": "green"},
    "older alpaca ranking": {"instruction": "Name a colour of the sky", "output": ["blue", "green"]},
    "whole conversations": {
        "chosen": [{"role": "user", "content": "Name a colour of the sky"}, {"role": "assistant", "content": "blue"}],
        "rejected": [{"role": "user", "content": "Name a colour of the sky"},
                     {"role": "assistant", "content": "green"}]},
    "TRL conversational": {"prompt": [{"role": "user", "content": "Name a colour of the sky"}],
                           "chosen": [{"role": "assistant", "content": "blue"}],
                           "rejected": [{"role": "assistant", "content": "green"}]},
    "TRL text prompt": {"prompt": "Name a colour of the sky", "chosen": "blue", "rejected": "green"},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_pair_layouts_without_a_registry_entry(chat_tok, tmp_path, layout):
    path = write_jsonl(tmp_path / "pairs.jsonl", [LAYOUTS[layout]])
    data = build_examples(data_args(dataset=str(path)), chat_tok, seed=0, kind="pair")
    row = data.train[0]
    user = "Name a colour\nof the sky" if layout == "alpaca ranking" else "Name a colour of the sky"
    expected = chat_tok(f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\nblue<|im_end|>\n",
                        add_special_tokens=False)["input_ids"]
    assert row["chosen_input_ids"] == expected
    assert trained_text(chat_tok, row["rejected_input_ids"], row["rejected_labels"]) == "green<|im_end|>"


def test_malformed_pairs_are_skipped_with_their_reason(chat_tok, tmp_path):
    good = {"instruction": "Say hi", "chosen": "hi", "rejected": "no"}
    records = [good, {"instruction": "Say hi", "chosen": "hi"}, {"instruction": "Say hi", "chosen": "hi",
                                                                  "rejected": "hi"},
               {"instruction": "", "chosen": "hi", "rejected": "no"}, {"instruction": "Say hi", "rejected": "no",
                                                                       "chosen": ""}]
    path = write_jsonl(tmp_path / "pairs.jsonl", records)
    data = build_examples(data_args(dataset=str(path)), chat_tok, seed=0, kind="pair")
    stats = next(iter(data.stats.values()))
    assert len(data.train) == 1 and stats["skipped"] == 4
    assert stats["skip_reasons"] == {"'rejected' is missing or empty": 1, "chosen and rejected are identical": 1,
                                     "turn 0 (user) is empty": 1, "'chosen' is missing or empty": 1}
    with pytest.raises(DataError, match="none of its 4 records is a usable preference pair"):
        build_examples(data_args(dataset=str(write_jsonl(tmp_path / "bad.jsonl", records[1:]))), chat_tok, seed=0,
                       kind="pair")


def test_kto_records_need_a_boolean_label(chat_tok, tmp_path):
    path = write_jsonl(tmp_path / "kto.jsonl", [{"instruction": "a", "output": "b", "label": True},
                                                {"instruction": "a", "output": "b", "label": "maybe"},
                                                {"instruction": "a", "output": "b"}])
    data = build_examples(data_args(dataset=str(path)), chat_tok, seed=0, kind="kto")
    stats = next(iter(data.stats.values()))
    assert len(data.train) == 1 and stats["skip_reasons"] == {
        "'label' must be true or false (desirable or not), got 'maybe'": 1,
        "'label' must be true or false (desirable or not), got None": 1}


def test_prompts_end_with_the_generation_prompt_and_keep_the_reference(chat_tok):
    data = build_examples(data_args(dataset="alpaca_en_demo", max_samples=5), chat_tok, seed=0, kind="prompt")
    raw = json.load(open(LF_DEMO / "alpaca_en_demo.json"))
    row = data.train[0]
    example = json.loads(row["conversation"])
    assert chat_tok.decode(row["input_ids"]).endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert example["reference"] == raw[row["record"]]["output"]
    assert "labels" not in data.train.column_names


def test_pair_collator_puts_chosen_rows_then_rejected_rows():
    batch = PairCollator(pad_token_id=0)([
        {"chosen_input_ids": [5, 6, 7], "chosen_labels": [-100, 6, 7], "rejected_input_ids": [5, 8],
         "rejected_labels": [-100, 8]},
        {"chosen_input_ids": [9, 4], "chosen_labels": [-100, 4], "rejected_input_ids": [9, 3, 3, 3],
         "rejected_labels": [-100, 3, 3, 3]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [9, 4, 0, 0], [5, 8, 0, 0], [9, 3, 3, 3]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100], [-100, 4, -100, -100], [-100, 8, -100, -100],
                                        [-100, 3, 3, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]


def test_kto_collator_pairs_each_prompt_with_the_previous_reply_for_the_kl_term():
    batch = KtoCollator(pad_token_id=0)([
        {"input_ids": [1, 2, 3], "labels": [-100, -100, 3], "kto_label": True},
        {"input_ids": [4, 5, 6, 7], "labels": [-100, 5, 6, 7], "kto_label": False}])
    assert batch["desirable"].tolist() == [True, False]
    # prompt 0 ([1, 2]) + reply 1 ([5, 6, 7]); prompt 1 ([4]) + reply 0 ([3])
    assert batch["kl_input_ids"].tolist() == [[1, 2, 5, 6, 7], [4, 3, 0, 0, 0]]
    assert batch["kl_labels"].tolist() == [[-100, -100, 5, 6, 7], [-100, 3, -100, -100, -100]]
