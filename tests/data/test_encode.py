import copy

import pytest

from lmforge.data.encode import encode_example
from lmforge.data.formats import SkipRecord
from lmforge.data.template import IGNORE_INDEX
from tests.data.test_template import CHATML, SPECIALS


@pytest.fixture(scope="module")
def tok(quickstart_texts):
    from lmforge.model.tokenizer import train_bpe_tokenizer

    t = train_bpe_tokenizer(quickstart_texts[:300], 600, SPECIALS)
    t.chat_template = CHATML
    return t


def conversation(n_exchanges: int) -> dict:
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(n_exchanges):
        messages += [{"role": "user", "content": f"What is {i} plus {i}? Please tell me the answer."},
                     {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]
    return {"messages": messages, "tools": None}


def test_short_examples_are_untouched(tok):
    ex = encode_example(tok, conversation(2), cutoff_len=1024)
    rendering = tok.apply_chat_template(conversation(2)["messages"], tokenize=False)
    assert not ex.truncated and ex.input_ids == tok(rendering, add_special_tokens=False)["input_ids"]


def test_too_long_keeps_the_system_prompt_and_the_latest_whole_exchanges(tok):
    full = encode_example(tok, conversation(6), cutoff_len=4096)
    limit = len(full.input_ids) - 10
    ex = encode_example(tok, conversation(6), cutoff_len=limit)
    assert ex.truncated and len(ex.input_ids) <= limit
    kept = conversation(6)["messages"]
    expected = tok.apply_chat_template(kept[:1] + kept[3:], tokenize=False)  # the oldest exchange dropped
    assert tok.decode(ex.input_ids, skip_special_tokens=False) == expected
    assert ex.trained_tokens > 0


def test_a_single_overlong_exchange_is_cut_and_an_untrainable_one_skipped(tok):
    long_answer = {"messages": [{"role": "user", "content": "Tell a story."},
                                {"role": "assistant", "content": "Once upon a time " * 50}], "tools": None}
    ex = encode_example(tok, long_answer, cutoff_len=120)
    assert ex.truncated and len(ex.input_ids) == 120 and ex.labels[-1] != IGNORE_INDEX
    long_prompt = {"messages": [{"role": "user", "content": "Tell a story. " * 50},
                                {"role": "assistant", "content": "No."}], "tools": None}
    with pytest.raises(SkipRecord, match="no assistant token fits within cutoff_len=40"):
        encode_example(copy.deepcopy(tok), long_prompt, cutoff_len=40)
