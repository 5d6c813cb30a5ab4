"""The fast labelling path (render once, fill the conversation's shape for the marked variants and the generation
prompts) gives exactly the ids and labels of the per-message renderings it replaces, on every demo dataset and
template; `render` is `apply_chat_template(tokenize=False)`."""

from __future__ import annotations

import copy
import json
import pathlib

import pytest

from lmforge.config.data import DataArguments
from lmforge.data import template as template_module
from lmforge.data.chat_templates import BUILTIN_TEMPLATES, apply_template_choice
from lmforge.data.encode import ConversationEncoder, LabelOptions
from lmforge.data.examples import source_conversations
from lmforge.data.registry import resolve_sources
from lmforge.data.template import render, render_conversation
from tests.conftest import LF_DEMO
from tests.data.test_template import CASES, CONVERSATION, SPECIALS

pytestmark = pytest.mark.slow  # a few thousand renderings both ways

TEMPLATE_FILES = pathlib.Path(__file__).parent / "templates"
PUBLISHED = {path.stem: path.read_text() for path in sorted(TEMPLATE_FILES.glob("*.jinja"))}
# Every demo dataset of each example kind, as LLaMA-Factory ships them.
DEMO = {"sft": ["alpaca_en_demo", "alpaca_zh_demo", "glaive_toolcall_en_demo", "glaive_toolcall_zh_demo", "identity",
                str(LF_DEMO / "v1_sft_demo.jsonl"), str(LF_DEMO / "reason_tool_use_demo_50.jsonl")],
        "pair": ["dpo_en_demo", "dpo_zh_demo"], "kto": ["kto_en_demo"]}
OPTIONS = [LabelOptions(4096), LabelOptions(4096, mask_history=True, enable_thinking=False), LabelOptions(48)]


@pytest.fixture(scope="module")
def base_tokenizer(quickstart_texts):
    from lmforge.model.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(quickstart_texts[:300], 600, SPECIALS)


def templated(tokenizer, choice: str):
    tok = copy.deepcopy(tokenizer)
    if choice in BUILTIN_TEMPLATES:
        apply_template_choice(tok, choice)
    else:
        tok.chat_template = PUBLISHED.get(choice) or CASES[choice][0]
    return tok


def demo_examples(kind: str, name: str, n: int = 36) -> list[str]:
    spec = resolve_sources(name, str(LF_DEMO))[0]
    args = DataArguments(dataset=name, dataset_dir=str(LF_DEMO), max_samples=n)
    return [json.dumps(c, ensure_ascii=False) for _, c in source_conversations(spec, args, 0, kind)[1]]


def encoded_both_ways(tok, kind: str, options: LabelOptions, conversations: list[str], monkeypatch):
    encoder = ConversationEncoder(tok, options, kind)
    fast = encoder({"conversation": conversations})
    with monkeypatch.context() as patch:  # every variant and generation prompt rendered by the template
        patch.setattr(template_module._ShapeFilled, "when_exact", classmethod(lambda cls, renderings, text: None))
        exact = encoder({"conversation": conversations})
    return fast, exact


@pytest.mark.parametrize("choice", [*BUILTIN_TEMPLATES, *PUBLISHED, *CASES])
def test_shape_filling_gives_the_ids_and_labels_of_per_message_rendering(base_tokenizer, choice, monkeypatch):
    tok = templated(base_tokenizer, choice)
    compared = 0
    for kind, names in DEMO.items():
        for name in names:
            conversations = demo_examples(kind, name)
            for options in OPTIONS if kind == "sft" else OPTIONS[:1]:
                fast, exact = encoded_both_ways(tok, kind, options, conversations, monkeypatch)
                assert fast == exact, (choice, kind, name, options)
                compared += sum(not skip for skip in fast["skip"])
    assert compared > 500  # most examples encode (a template may refuse some, e.g. tool turns)


@pytest.mark.parametrize("choice", ["qwen3", "llama3.1_tools", "reasoning_dropped_from_history", "llama3"])
def test_contents_the_template_rewrites_fall_back_to_rendering(base_tokenizer, choice, monkeypatch):
    """Contents Qwen3 splits at </think>, that `trim` shortens, or that a template drops from earlier turns: the
    shape's filling differs from the real rendering, so that conversation is labelled by rendering."""
    tok = templated(base_tokenizer, choice)
    rewritten = [
        copy.deepcopy(CONVERSATION),
        [{"role": "user", "content": "  padded question  "}, {"role": "assistant", "content": "\nanswer\n"}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\nr\n</think>\n\na"},
         {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2", "reasoning_content": "\nr2\n"}],
    ]
    conversations = [json.dumps({"messages": m}) for m in rewritten]
    fast, exact = encoded_both_ways(tok, "sft", LabelOptions(4096), conversations, monkeypatch)
    assert fast == exact


def test_one_rendering_per_conversation_once_its_shape_is_known(base_tokenizer, monkeypatch):
    tok = templated(base_tokenizer, "qwen3")
    calls = []
    real = template_module.render
    monkeypatch.setattr(template_module, "render", lambda *a, **k: calls.append(1) or real(*a, **k))
    conversations = [[{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
                     for i in range(10)]
    for messages in conversations:
        render_conversation(tok, messages)
    first = len(calls)
    for messages in conversations:
        render_conversation(tok, [{**m, "content": m["content"] + "!"} for m in messages])
    assert len(calls) - first == 10  # the same shape: one rendering each, no marked or generation-prompt ones
    assert first <= 10 + 2  # + the shape itself and its generation prompt, once (unless cached by an earlier test)


@pytest.mark.parametrize("choice", [*BUILTIN_TEMPLATES, *PUBLISHED])
def test_render_is_apply_chat_template(base_tokenizer, choice):
    tok = templated(base_tokenizer, choice)
    tools = [{"type": "function", "function": {"name": "add", "description": "Add two numbers.",
                                               "parameters": {"type": "object", "properties": {
                                                   "a": {"type": "integer"}, "b": {"type": "integer"}}}}}]
    conversations = [
        CONVERSATION,
        [{"role": "user", "content": "Add 2 and 3."},
         {"role": "assistant", "content": "", "tool_calls": [
             {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]},
         {"role": "tool", "content": "5"}, {"role": "assistant", "content": "It is 5.", "reasoning_content": "easy"}],
        [{"role": "user", "content": "hi", "name": None}],
    ]
    for messages in conversations:
        for kwargs in ({}, {"add_generation_prompt": True}, {"enable_thinking": False}):
            for with_tools in (None, tools):
                try:
                    expected = tok.apply_chat_template(messages, tools=with_tools, tokenize=False, **kwargs)
                except Exception as err:  # noqa: BLE001 - a template refusing a conversation refuses it both ways
                    with pytest.raises(type(err)):
                        render(tok, messages, with_tools, **kwargs)
                    continue
                assert render(tok, messages, with_tools, **kwargs) == expected
