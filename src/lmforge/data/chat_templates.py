"""Built-in chat templates, only for base models whose tokenizer ships none (`template: NAME`), and custom ones
(`template: path/to/file.jinja`). A tokenizer's own template always wins when `template` is unset.

Each built-in ends every assistant turn with a special token (its end-of-turn marker or EOS), so the model learns
to stop; the tokens a template needs are added to the tokenizer as special tokens (the caller resizes embeddings).
"""

from __future__ import annotations

import os

from transformers import PreTrainedTokenizerBase

_CHATML = (
    "{%- for m in messages %}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
_LLAMA3 = (
    "{%- for m in messages %}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
_ALPACA = (
    "{%- for m in messages %}"
    "{%- if m['role'] == 'system' %}{{- m['content'] + '\\n\\n' }}"
    "{%- elif m['role'] == 'user' %}{{- '### Instruction:\\n' + m['content'] + '\\n\\n### Response:\\n' }}"
    "{%- elif m['role'] == 'assistant' %}{{- m['content'] + eos_token + '\\n\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
)
# The user turn already ends with "Assistant: ", so the generation prompt is built in.
_DEFAULT = (
    "{%- for m in messages %}"
    "{%- if m['role'] == 'system' %}{{- 'System: ' + m['content'] + '\\n' }}"
    "{%- elif m['role'] == 'user' %}{{- 'Human: ' + m['content'] + '\\nAssistant: ' }}"
    "{%- elif m['role'] == 'assistant' %}{{- m['content'] + eos_token + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
)

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
