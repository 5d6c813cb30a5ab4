"""Multiple-choice prompts: n solved dev examples, then the question, as one text (base models) or as chat turns.

`letter` scoring lists the options and asks for a letter; `loglik` scoring asks the question cloze-style (options not
listed) and scores each option's text as the answer, so the solved examples answer with text too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from lmforge.config.schema import EvalConfig
from lmforge.data.template import render
from lmforge.errors import ConfigError
from lmforge.eval.benchmarks import Question, Subject

# Wording as in the benchmarks' papers (MMLU; CMMLU/C-Eval), so scores are comparable with published ones.
WORDING = {
    "en": {"header": "The following are multiple choice questions (with answers) about {subject}.\n\n",
           "answer": "Answer:", "sep": " "},
    "zh": {"header": "以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n",
           "answer": "答案：", "sep": ""},
}


@dataclass
class PromptStyle:
    chat: bool  # chat turns (the tokenizer's chat template) or one plain text
    lang: str  # a WORDING key
    list_options: bool  # letter scoring lists the options; cloze (loglik) scoring does not

    @property
    def wording(self) -> dict[str, str]:
        return WORDING[self.lang]

    def question_text(self, q: Question, letters: list[str]) -> str:
        lines = [q.question]
        if self.list_options:
            lines += [f"{letter}. {choice}" for letter, choice in zip(letters, q.choices, strict=True)]
        return "\n".join(lines) + "\n" + self.wording["answer"]

    def answer_text(self, q: Question, letters: list[str]) -> str:
        """A solved example's answer: its letter, or (cloze) its option's text."""
        return q.answer if self.list_options else q.choices[letters.index(q.answer)]

    def continuation(self, answer: str) -> str:
        """What follows the prompt when `answer` is given: in chat the assistant turn holds it as is."""
        return answer if self.chat else self.wording["sep"] + answer


def build_prompt(tokenizer: PreTrainedTokenizerBase, style: PromptStyle, subject: Subject, question: Question,
                 shots: int) -> str:
    """The text the model continues with its answer: header, `shots` solved dev examples, the question."""
    letters = subject.letters
    header = style.wording["header"].format(subject=subject.name)
    examples = subject.dev[:shots]
    if not style.chat:
        parts = [style.question_text(q, letters) + style.continuation(style.answer_text(q, letters)) + "\n\n"
                 for q in examples]
        return header + "".join(parts) + style.question_text(question, letters)
    messages = []
    for q in [*examples, question]:
        messages.append({"role": "user", "content": style.question_text(q, letters)})
        messages.append({"role": "assistant", "content": style.answer_text(q, letters)})
    messages.pop()  # the question's own answer is what the model gives
    # The header opens the first user turn instead of a system message: not every template has a system role.
    messages[0]["content"] = header + messages[0]["content"]
    # Thinking templates get the empty thinking block, so the answer is the very next thing the model writes.
    return render(tokenizer, messages, add_generation_prompt=True, enable_thinking=False)


def prompt_style_is_chat(cfg: EvalConfig, tokenizer: Any) -> bool:
    style = cfg.eval.prompt_style
    if style == "chat" and not tokenizer.chat_template:
        raise ConfigError(f"Config error ({cfg.source}): 'prompt_style: chat' needs a chat template: the tokenizer "
                          "has none, so set `template` (chatml, llama3, alpaca, default or a .jinja file).")
    return style == "chat" or (style == "auto" and bool(tokenizer.chat_template))
