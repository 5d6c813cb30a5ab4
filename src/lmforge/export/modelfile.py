"""An Ollama Modelfile whose TEMPLATE renders conversations as the model's chat template does.

Ollama templates are Go templates, not Jinja, so the chat template is not translated: it is rendered on probe
conversations and the text it puts around each role's content is read off (the same idea as data/template.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from lmforge.data.template import end_of_turn_text, render, special_tokens

_MARK = {"system": "\u2063SYSTEM\u2063", "user": "\u2063USER\u2063", "user2": "\u2063USER2\u2063",
         "assistant": "\u2063ASSISTANT\u2063"}


@dataclass
class RolePieces:
    """Text before and after each role's content, what opens the conversation, and the generation prompt."""

    start: str  # before the first message when there is no system message (BOS, a default system prompt)
    system: tuple[str, str]  # around a system message (the first message); includes the opening (BOS)
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation_prompt: str

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """What the Go template produces for `messages` (for checking the pieces)."""
        text = "" if messages and messages[0]["role"] == "system" else self.start
        for m in messages:
            before, after = getattr(self, m["role"])
            text += before + m["content"] + after
        return text + (self.generation_prompt if add_generation_prompt else "")


def _between(text: str, first: str, second: str) -> str:
    return text[text.index(first) + len(first): text.index(second)]


def role_pieces(tokenizer: PreTrainedTokenizerBase) -> RolePieces:
    m = _MARK
    user_only = render(tokenizer, [{"role": "user", "content": m["user"]}])
    with_prompt = render(tokenizer, [{"role": "user", "content": m["user"]}], add_generation_prompt=True)
    generation_prompt = with_prompt[len(user_only):] if with_prompt.startswith(user_only) else ""
    user_after = user_only.split(m["user"], 1)[1]
    exchange = render(tokenizer, [{"role": "user", "content": m["user"]},
                                  {"role": "assistant", "content": m["assistant"]},
                                  {"role": "user", "content": m["user2"]}])
    assistant_before = _between(exchange, m["user"], m["assistant"]).removeprefix(user_after)
    between_turns = _between(exchange, m["assistant"], m["user2"])
    head = exchange[: exchange.index(m["user"])]
    # the assistant's closing runs to its end-of-turn token and the whitespace after it; the rest opens the user's
    # turn, which the conversation's head must end with too
    end_of_turn = end_of_turn_text(between_turns, special_tokens(tokenizer))
    rest = between_turns[len(end_of_turn):]
    opening = rest.lstrip()
    assistant_after, user_before = between_turns[: len(between_turns) - len(opening)], opening
    if not end_of_turn or not head.endswith(user_before):
        assistant_after, user_before = between_turns, ""
    start = head[: len(head) - len(user_before)]
    with_system = render(tokenizer, [{"role": "system", "content": m["system"]},
                                     {"role": "user", "content": m["user"]}])
    system_before = with_system[: with_system.index(m["system"])]
    system_after = _between(with_system, m["system"], m["user"]).removesuffix(user_before)
    return RolePieces(start, (system_before, system_after), (user_before, user_after),
                      (assistant_before, assistant_after), generation_prompt)


def _go_string(text: str) -> str:
    """Literal text inside a Go template (only `{{` needs escaping)."""
    return text.replace("{{", '{{ "{{" }}')


def modelfile(gguf_name: str, pieces: RolePieces, stop_tokens: list[str]) -> str:
    p = {k: _go_string(v) if isinstance(v, str) else tuple(_go_string(x) for x in v)
         for k, v in vars(pieces).items()}
    # no `{{-` after literal text: it would trim the template's own line breaks
    template = (
        '{{ if or (not .Messages) (ne (index .Messages 0).Role "system") }}' + p["start"] + "{{ end }}"
        + "{{ range .Messages }}"
        + '{{ if eq .Role "system" }}' + p["system"][0] + "{{ .Content }}" + p["system"][1]
        + '{{ else if eq .Role "user" }}' + p["user"][0] + "{{ .Content }}" + p["user"][1]
        + '{{ else if eq .Role "assistant" }}' + p["assistant"][0] + "{{ .Content }}" + p["assistant"][1]
        + "{{ end }}{{ end }}" + p["generation_prompt"]
    )
    lines = [f"FROM ./{gguf_name}", "", f'TEMPLATE """{template}"""', ""]
    lines += [f'PARAMETER stop "{token}"' for token in stop_tokens]
    return "\n".join(lines) + "\n"
