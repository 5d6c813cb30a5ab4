"""Built-in chat templates, only for base models whose tokenizer ships none (`template: NAME`), and custom ones
(`template: path/to/file.jinja`). A tokenizer's own template always wins when `template` is unset.

Each built-in ends every assistant turn with a special token (its end-of-turn marker or EOS), so the model learns
to stop; the tokens a template needs are added to the tokenizer as special tokens (the caller resizes embeddings).
"""

from __future__ import annotations

import os

from transformers import PreTrainedTokenizerBase

# Shared by the built-ins: the system text with the tool list appended, and an assistant message's content followed
# by its tool calls as JSON in <tool_call> tags (the convention of Qwen and Hermes models).
_SYSTEM = (
    "{%- set system = messages[0]['content'] if messages and messages[0]['role'] == 'system' else '' %}"
    "{%- if tools %}{%- set ns = namespace(text=system + ('\\n\\n' if system else '') + 'You may call these "
    "functions; answer with <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call> to call one:') %}"
    "{%- for tool in tools %}{%- set ns.text = ns.text + '\\n' + (tool | tojson) %}{%- endfor %}"
    "{%- set system = ns.text %}{%- endif %}"
)
_ANSWER = (
    "{%- macro answer(m) %}{{- m['content'] }}"
    "{%- for call in m.get('tool_calls') or [] %}{%- set f = call['function'] if call['function'] else call %}"
    "{{- ('\\n' if m['content'] or not loop.first else '') + '<tool_call>\\n{\"name\": \"' + f['name'] + "
    "'\", \"arguments\": ' + (f['arguments'] if f['arguments'] is string else f['arguments'] | tojson) + "
    "'}\\n</tool_call>' }}"
    "{%- endfor %}{%- endmacro %}"
)


def _builtin(system: str, user: str, assistant: str, tool: str, generation_prompt: str) -> str:
    """A template from the text each role becomes (Jinja expressions over `m`, the message, and `system`)."""
    return (
        _SYSTEM + _ANSWER
        + "{%- if system %}{{- " + system + " }}{%- endif %}"
        + "{%- for m in messages %}"
        + "{%- if m['role'] == 'user' %}{{- " + user + " }}"
        + "{%- elif m['role'] == 'assistant' %}{{- " + assistant + " }}"
        + "{%- elif m['role'] == 'tool' %}{{- " + tool + " }}"
        + "{%- endif %}{%- endfor %}"
        + "{%- if add_generation_prompt %}{{- " + generation_prompt + " }}{%- endif %}"
    )


_CHATML = _builtin("'<|im_start|>system\\n' + system + '<|im_end|>\\n'",
                   "'<|im_start|>user\\n' + m['content'] + '<|im_end|>\\n'",
                   "'<|im_start|>assistant\\n' + answer(m) + '<|im_end|>\\n'",
                   "'<|im_start|>tool\\n' + m['content'] + '<|im_end|>\\n'",
                   "'<|im_start|>assistant\\n'")
_LLAMA3 = _builtin("'<|start_header_id|>system<|end_header_id|>\\n\\n' + system + '<|eot_id|>'",
                   "'<|start_header_id|>user<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>'",
                   "'<|start_header_id|>assistant<|end_header_id|>\\n\\n' + answer(m) + '<|eot_id|>'",
                   "'<|start_header_id|>ipython<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>'",
                   "'<|start_header_id|>assistant<|end_header_id|>\\n\\n'")
_ALPACA = _builtin("system + '\\n\\n'",
                   "'### Instruction:\\n' + m['content'] + '\\n\\n### Response:\\n'",
                   "answer(m) + eos_token + '\\n\\n'",
                   "'### Observation:\\n' + m['content'] + '\\n\\n### Response:\\n'",
                   "''")
# The user turn already ends with "Assistant: ", so the generation prompt is built in.
_DEFAULT = _builtin("'System: ' + system + '\\n'",
                    "'Human: ' + m['content'] + '\\nAssistant: '",
                    "answer(m) + eos_token + '\\n'",
                    "'Observation: ' + m['content'] + '\\nAssistant: '",
                    "''")

# name -> (Jinja template, special tokens it needs)
BUILTIN_TEMPLATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "chatml": (_CHATML, ("<|im_start|>", "<|im_end|>")),
    "llama3": (_LLAMA3, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    "alpaca": (_ALPACA, ()),
    "default": (_DEFAULT, ()),
}


class TemplateError(ValueError):
    pass


def apply_template_choice(tokenizer: PreTrainedTokenizerBase, template: str | None) -> int:
    """Set `tokenizer.chat_template` from `template` (a built-in name or a .jinja path; unset keeps the tokenizer's
    own). Returns how many special tokens were added, so the caller can resize the model's embeddings."""
    if template is None:
        if not tokenizer.chat_template:
            raise TemplateError("the tokenizer has no chat template: set `template` to one of "
                                f"{', '.join(BUILTIN_TEMPLATES)} or a .jinja file")
        return 0
    if template in BUILTIN_TEMPLATES:
        jinja, needed = BUILTIN_TEMPLATES[template]
        missing = [t for t in needed if t not in tokenizer.get_vocab()]
        added = tokenizer.add_tokens(missing, special_tokens=True) if missing else 0
        tokenizer.chat_template = jinja
        return added
    if template.endswith(".jinja"):
        if not os.path.isfile(template):
            raise TemplateError(f"template file '{template}' does not exist")
        with open(template, encoding="utf-8") as fh:
            tokenizer.chat_template = fh.read()
        return 0
    raise TemplateError(f"template '{template}' is neither a built-in ({', '.join(BUILTIN_TEMPLATES)}) nor a "
                        ".jinja file")
