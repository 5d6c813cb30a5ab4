"""Assistant masks derived by rendering, checked against an oracle on templates of several families."""

import copy
import pathlib

import pytest

from lmforge.data.template import IGNORE_INDEX, encode_conversation, render_conversation

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>", "<s>", "</s>", "<start_of_turn>", "<end_of_turn>"]

CHATML = (
    "{%- if messages[0].role != 'system' %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3 = (
    "{{- bos_token }}{%- for m in messages %}"
    "{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + m.content | trim + '<|eot_id|>' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)
# Reasoning is kept for the last assistant turn only; earlier turns lose their <think> block.
REASONING = (
    "{%- set ns = namespace(last_user=0) %}"
    "{%- for m in messages %}{%- if m.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}{%- endfor %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' %}"
    "{%- set content = m.content %}"
    "{%- if loop.index0 < ns.last_user and '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# The system prompt is folded into the first user turn; assistant turns end with EOS.
INST = (
    "{{- bos_token }}"
    "{%- if messages[0].role == 'system' %}{%- set sys = messages[0].content %}{%- set msgs = messages[1:] %}"
    "{%- else %}{%- set sys = '' %}{%- set msgs = messages %}{%- endif %}"
    "{%- for m in msgs %}"
    "{%- if m.role == 'user' %}"
    "{%- if loop.first and sys %}{{- '[INST] ' + sys + '\\n\\n' + m.content + ' [/INST]' }}"
    "{%- else %}{{- '[INST] ' + m.content + ' [/INST]' }}{%- endif %}"
    "{%- else %}{{- ' ' + m.content | trim + eos_token }}{%- endif %}"
    "{%- endfor %}"
)
# Assistant is called "model"; no system role (folded into the first user turn); content trimmed.
GEMMA = (
    "{{- bos_token }}"
    "{%- if messages[0].role == 'system' %}{%- set sys = messages[0].content + '\\n\\n' %}"
    "{%- set msgs = messages[1:] %}{%- else %}{%- set sys = '' %}{%- set msgs = messages %}{%- endif %}"
    "{%- for m in msgs %}{%- set role = 'model' if m.role == 'assistant' else m.role %}"
    "{{- '<start_of_turn>' + role + '\\n' + (sys if loop.first else '') + m.content | trim + '<end_of_turn>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
)

CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "<think>\nadd them\n</think>\n\nTwo plus two is four."},
    {"role": "user", "content": "And three plus four?"},
    {"role": "assistant", "content": "  Three plus four is seven.  "},
]

# template, bos, eos, expected trained text of each assistant turn (as that template renders it)
CASES = {
    "chatml": (CHATML, None, "<|im_end|>", [
        "<think>\nadd them\n</think>\n\nTwo plus two is four.<|im_end|>", "  Three plus four is seven.  <|im_end|>"]),
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>", [
        "<think>\nadd them\n</think>\n\nTwo plus two is four.<|eot_id|>", "Three plus four is seven.<|eot_id|>"]),
    "reasoning_dropped_from_history": (REASONING, None, "<|im_end|>", [
        "Two plus two is four.<|im_end|>", "  Three plus four is seven.  <|im_end|>"]),
    "system_folded_eos_in_turn": (INST, "<s>", "</s>", [
        "<think>\nadd them\n</think>\n\nTwo plus two is four.</s>", "Three plus four is seven.</s>"]),
    "gemma_style": (GEMMA, "<s>", "<end_of_turn>", [
        "<think>\nadd them\n</think>\n\nTwo plus two is four.<end_of_turn>", "Three plus four is seven.<end_of_turn>"]),
}


@pytest.fixture(scope="module")
def chat_tokenizer(quickstart_texts):
    from lmforge.model.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(quickstart_texts[:300], 600, SPECIALS)


def trained_runs(ids, labels):
    runs, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


@pytest.mark.parametrize("case", sorted(CASES))
def test_trained_tokens_are_exactly_the_assistant_turns(chat_tokenizer, case):
    template, bos, eos, expected = CASES[case]
    tok = copy.deepcopy(chat_tokenizer)
    tok.chat_template = template
    tok.bos_token = bos
    tok.eos_token = eos
    ids, labels = encode_conversation(tok, CONVERSATION)
    rendering = tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert ids == tok(rendering, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=False) == rendering
    runs = [tok.decode(run, skip_special_tokens=False) for run in trained_runs(ids, labels)]
    # a BPE token may carry the single space the template puts before the content
    assert [r.lstrip(" ") for r in runs] == [e.lstrip(" ") for e in expected]


def test_mask_history_and_train_on_prompt(chat_tokenizer):
    tok = copy.deepcopy(chat_tokenizer)
    tok.chat_template = CHATML
    ids, labels = encode_conversation(tok, CONVERSATION, mask_history=True)
    runs = [tok.decode(r, skip_special_tokens=False) for r in trained_runs(ids, labels)]
    assert runs == ["  Three plus four is seven.  <|im_end|>"]
    ids, labels = encode_conversation(tok, CONVERSATION, train_on_prompt=True)
    assert labels == ids


def test_spans_point_into_the_real_rendering(chat_tokenizer):
    tok = copy.deepcopy(chat_tokenizer)
    tok.chat_template = REASONING
    rendered = render_conversation(tok, CONVERSATION)
    assert [rendered.text[s:e] for s, e in rendered.assistant_spans] == CASES["reasoning_dropped_from_history"][3]


@pytest.mark.parametrize(("name", "eot"), [("chatml", "<|im_end|>"), ("llama3", "<|eot_id|>"),
                                           ("alpaca", "<|endoftext|>"), ("default", "<|endoftext|>")])
def test_builtin_templates_train_the_answer_and_a_stop_token(quickstart_texts, name, eot):
    from lmforge.data.chat_templates import apply_template_choice
    from lmforge.model.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(quickstart_texts[:200], 400, ["<|endoftext|>"])  # a base tokenizer, no template
    before = len(tok)
    added = apply_template_choice(tok, name)
    assert len(tok) == before + added
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Two plus two?"},
                {"role": "assistant", "content": "Four."}, {"role": "user", "content": "One plus one?"},
                {"role": "assistant", "content": "Two."}]
    ids, labels = encode_conversation(tok, messages)
    runs = [tok.decode(r, skip_special_tokens=False) for r in trained_runs(ids, labels)]
    assert [r.strip() for r in runs] == [f"Four.{eot}", f"Two.{eot}"]
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert tok.apply_chat_template(messages[:3], tokenize=False).startswith(prompt)


def test_template_choice_errors(tmp_path, chat_tokenizer):
    from lmforge.data.chat_templates import TemplateError, apply_template_choice

    tok = copy.deepcopy(chat_tokenizer)
    with pytest.raises(TemplateError, match="has no chat template"):
        apply_template_choice(tok, None)
    with pytest.raises(TemplateError, match="neither a built-in"):
        apply_template_choice(tok, "chatmel")
    path = tmp_path / "mine.jinja"
    path.write_text(CHATML)
    assert apply_template_choice(tok, str(path)) == 0 and tok.chat_template == CHATML


QWEN3 = (pathlib.Path(__file__).parent / "templates" / "qwen3.jinja").read_text()  # as published with Qwen3
READ_FILE = {"name": "read_file", "description": "Read a file",
             "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}
TOOLS = [{"type": "function", "function": READ_FILE}]
AGENT = [
    {"role": "system", "content": "You are a coding agent."},
    {"role": "user", "content": "Fix the bug in main.py"},
    {"role": "assistant", "content": "", "reasoning_content": "Look first.",
     "tool_calls": [{"type": "function", "function": {"name": "read_file", "arguments": {"path": "main.py"}}}]},
    {"role": "tool", "content": "print(1/0)"},
    {"role": "assistant", "content": "The divisor is zero.", "reasoning_content": "Found it."},
]


def test_reasoning_and_tool_calls_are_trained_as_the_template_renders_them(chat_tokenizer):
    tok = copy.deepcopy(chat_tokenizer)
    tok.chat_template = QWEN3
    rendered = render_conversation(tok, AGENT, tools=TOOLS)
    assert rendered.text == tok.apply_chat_template(AGENT, tools=TOOLS, tokenize=False)
    assert [rendered.text[s:e] for s, e in rendered.assistant_spans] == [
        '<think>\nLook first.\n</think>\n\n<tool_call>\n{"name": "read_file", "arguments": {"path": "main.py"}}'
        "\n</tool_call><|im_end|>",
        "<think>\nFound it.\n</think>\n\nThe divisor is zero.<|im_end|>",
    ]
    # the tool result and the prompts are never trained
    ids, labels = encode_conversation(tok, AGENT, tools=TOOLS)
    trained = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX],
                         skip_special_tokens=False)
    assert "print(1/0)" not in trained and "Fix the bug" not in trained


def test_reasoning_dropped_from_earlier_turns_by_the_template_is_not_trained(chat_tokenizer):
    tok = copy.deepcopy(chat_tokenizer)
    tok.chat_template = QWEN3
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4", "reasoning_content": "add"},
                {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6", "reasoning_content": "add"}]
    rendered = render_conversation(tok, messages)
    assert [rendered.text[s:e] for s, e in rendered.assistant_spans] == [
        "4<|im_end|>", "<think>\nadd\n</think>\n\n6<|im_end|>"]


# Llama 3.1's JSON tool-calling template as vLLM publishes it
LLAMA31_TOOLS = (pathlib.Path(__file__).parent / "templates" / "llama3.1_tools.jinja").read_text()
GREETING = [{"role": "user", "content": "How are you"}, {"role": "assistant", "content": "I am fine!"},
            {"role": "user", "content": "你好"}, {"role": "assistant", "content": "很高兴认识你！"}]


def _generated_after_prompt(tok, messages, **kwargs) -> list[str]:
    """Oracle: for each assistant turn, the text after `apply_chat_template(history, add_generation_prompt=True)`
    in the full rendering, up to and including the turn's end-of-turn token: what the model must generate (None
    where the template renders that history differently once a reply follows)."""
    full = tok.apply_chat_template(messages, tokenize=False, **kwargs)
    out = []
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            prompt = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True, **kwargs)
            if not full.startswith(prompt):
                out.append(None)
                continue
            rest = full[len(prompt):]
            eot = min(rest.find(t) + len(t) for t in ("<|im_end|>", "<|eot_id|>") if t in rest)
            out.append(rest[:eot])
    return out


def _trained_texts(tok, messages, **kwargs) -> list[str]:
    ids, labels = encode_conversation(tok, messages, **kwargs)
    return [tok.decode(run, skip_special_tokens=False) for run in trained_runs(ids, labels)]


@pytest.mark.parametrize(("enable_thinking", "reasoning"), [(True, False), (False, False), (True, True)])
def test_qwen3_trains_everything_after_the_generation_prompt(chat_tokenizer, enable_thinking, reasoning):
    """LLaMA-Factory's qwen3 template test splits the last turn this way: with thinking on, the empty think block of
    a last turn is the model's to write (trained); with thinking off the generation prompt writes it (not trained)."""
    tok = copy.deepcopy(chat_tokenizer)
    tok.chat_template = QWEN3
    messages = copy.deepcopy(GREETING)
    if reasoning:
        messages[-1]["reasoning_content"] = "用中文问候。"
    trained = _trained_texts(tok, messages, enable_thinking=enable_thinking)
    expected = _generated_after_prompt(tok, messages, enable_thinking=enable_thinking)
    assert [t for t, e in zip(trained, expected, strict=True) if e is not None] == [e for e in expected if e]
    last = {(True, False): "<think>\n\n</think>\n\n很高兴认识你！<|im_end|>",
            (False, False): "很高兴认识你！<|im_end|>",
            (True, True): "<think>\n用中文问候。\n</think>\n\n很高兴认识你！<|im_end|>"}[(enable_thinking, reasoning)]
    assert trained == ["I am fine!<|im_end|>", last]
    # the prompt LLaMA-Factory's test expects is exactly what is left untrained before the last answer
    ids, labels = encode_conversation(tok, messages, enable_thinking=enable_thinking)
    first_trained_of_last = max(i for i in range(1, len(labels))
                                if labels[i] != IGNORE_INDEX and labels[i - 1] == IGNORE_INDEX)
    assert tok.decode(ids[:first_trained_of_last], skip_special_tokens=False) == tok.apply_chat_template(
        messages[:3], tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking)


def test_llama31_tool_call_opening_is_trained(chat_tokenizer):
    tok = copy.deepcopy(chat_tokenizer)
    tok.chat_template = LLAMA31_TOOLS
    tok.bos_token = "<|begin_of_text|>"
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                                "parameters": {"type": "object",
                                                               "properties": {"city": {"type": "string"}}}}}]
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "It is sunny."}]
    trained = _trained_texts(tok, messages, tools=tools, date_string="26 Jul 2024")
    assert trained == ['{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>', "It is sunny.<|eot_id|>"]
    assert trained == _generated_after_prompt(tok, messages, tools=tools, date_string="26 Jul 2024")


# Mistral-style: no generation prompt at all; the model writes everything after `[/INST]`, tool calls included.
MISTRAL_TOOLS = (
    "{{- bos_token }}{%- for m in messages %}"
    "{%- if m.role == 'user' %}{{- '[INST] ' + m.content + '[/INST]' }}"
    "{%- elif m.role == 'tool' %}{{- '[TOOL_RESULTS] ' + m.content + '[/TOOL_RESULTS]' }}"
    "{%- elif m.tool_calls is defined %}"
    "{{- '[TOOL_CALLS] ' + (m.tool_calls | map(attribute='function') | list | tojson) + eos_token }}"
    "{%- else %}{{- ' ' + m.content | trim + eos_token }}{%- endif %}{%- endfor %}"
)


def test_a_template_without_generation_prompt_trains_everything_after_the_history(chat_tokenizer):
    """[INST]-style templates write nothing for add_generation_prompt: the model continues the history's rendering,
    so a tool call's `[TOOL_CALLS] [{"name": "` opening is the model's to write and is trained."""
    tok = copy.deepcopy(chat_tokenizer)
    tok.chat_template, tok.bos_token, tok.eos_token = MISTRAL_TOOLS, "<s>", "</s>"
    tok.add_special_tokens({"additional_special_tokens": ["[TOOL_CALLS]", "[INST]", "[/INST]"]})
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "content": "sunny"}, {"role": "user", "content": "Thanks"},
                {"role": "assistant", "content": "You are welcome."}]
    trained = _trained_texts(tok, messages)
    assert [t.lstrip(" ") for t in trained] == [
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]</s>', "You are welcome.</s>"]
