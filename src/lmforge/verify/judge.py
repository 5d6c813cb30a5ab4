"""A pairwise judge behind an OpenAI-compatible endpoint: which of two answers to a prompt is better.

Online DPO (`judge_url`) asks it about each prompt's two completions, as `lmforge synth`'s judge task asks a teacher
about a record's two responses: `judge_template` filled with the rubric, the prompt and the answers as A and B, the
verdict the first standalone A or B of the reply. The two answers are shown in an order drawn from their own text
(a judge that prefers the first position cannot favour one completion consistently, and a resumed run asks the same
question). A reply without a verdict leaves the pair undecided (scores 0 and 0: a tie, not trained).
"""

from __future__ import annotations

import json
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lmforge.errors import TrainingError
from lmforge.verify.remote import post_json

_VERDICT = re.compile(r"\b([AB])\b")


def verdict(text: str) -> str | None:
    """"A", "B", or None when the reply names neither on its own."""
    found = _VERDICT.search(text.upper())
    return found.group(1) if found else None


def question_of(messages: list[dict]) -> str:
    """The prompt as the judge reads it: the non-system turns' text."""
    return "\n".join(str(m.get("content") or "") for m in messages if m.get("role") != "system")


class PairwiseJudge:
    """A reward over pairs in consecutive rows (online DPO's layout): 1 for the completion the judge prefers, 0 for
    the other; 0 and 0 when it does not decide. Pairs are judged concurrently by `workers` threads."""

    def __init__(self, base_url: str, model: str, template: str, rubric: str, api_key: str | None = None,
                 timeout: float = 60.0, retries: int = 3, workers: int = 4, backoff: float = 1.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.template, self.rubric = model, template, rubric
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.threads = ThreadPoolExecutor(max(1, workers))
        self.undecided = 0

    def ask(self, question: str, first: str, second: str) -> tuple[float, float]:
        swapped = zlib.crc32(f"{question}\0{first}\0{second}".encode()) % 2 == 1
        a, b = (second, first) if swapped else (first, second)
        request = self.template.format(rubric=self.rubric, prompt=question, a=a, b=b)
        body = {"model": self.model, "messages": [{"role": "user", "content": request}], "temperature": 0.0}
        raw = post_json(self.url, body, self.timeout, self.retries, self.backoff, "judge_url", self.headers)
        try:
            reply = json.loads(raw)["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise TrainingError(f"judge_url {self.url} answered something other than a chat completion: "
                                f"{raw[:300]!r}") from None
        choice = verdict(reply)
        if choice is None:
            self.undecided += 1
            return 0.0, 0.0
        first_won = (choice == "A") != swapped
        return (1.0, 0.0) if first_won else (0.0, 1.0)

    def __call__(self, prompts: list[str], completions: list[str], messages: list[list[dict]],
                 **_: Any) -> list[float]:
        if len(completions) % 2:
            raise TrainingError(f"the judge compares pairs, got {len(completions)} completions")
        jobs = [self.threads.submit(self.ask, question_of(messages[i]), completions[i], completions[i + 1])
                for i in range(0, len(completions), 2)]
        return [score for job in jobs for score in job.result()]

    def close(self) -> None:
        self.threads.shutdown(wait=False)
