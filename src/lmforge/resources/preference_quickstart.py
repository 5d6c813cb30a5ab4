"""Generate the preference quickstart data: the SFT quickstart's instructions with a right and a wrong answer.

The chosen answer follows the instruction's rule (repeat the words, name the first or last word, count them); the
rejected one breaks it (the words out of order or one missing, another word, a wrong count) or refuses. A reward
model or policy that learned the preference ranks held-out pairs it never saw. Regenerate the shipped files (and the
conversations the README scores with the quickstart's reward model) with:

    python -m lmforge.resources.preference_quickstart src/lmforge/resources examples
"""

from __future__ import annotations

import json
import os
import random
import sys

from lmforge.resources.quickstart_corpus import NUMBERS
from lmforge.resources.sft_quickstart import WORDS, example

REFUSALS = ["Sorry, I can not help with that.", "I do not know.", "Please ask someone else."]


def wrong_answer(instruction: str, answer: str, rng: random.Random) -> str:
    """An answer to `instruction` that breaks its rule (never equal to the right `answer`)."""
    if rng.random() < 0.25:
        return rng.choice(REFUSALS)
    words = instruction.split(": ", 1)[1].split()
    if instruction.startswith("Repeat"):
        wrong = words[::-1] if rng.random() < 0.5 else words[:-1]
        return " ".join(wrong)
    if instruction.startswith("How many"):
        return rng.choice([n for n in NUMBERS[1:6] if n != answer])
    return rng.choice([w for w in words + rng.sample(WORDS, 2) if w != answer])


def pairs(n: int = 2000, seed: int = 0) -> list[dict[str, str]]:
    """Alpaca-layout ranking records: instruction, chosen, rejected."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ex = example(rng)
        out.append({"instruction": ex["instruction"], "chosen": ex["output"],
                    "rejected": wrong_answer(ex["instruction"], ex["output"], rng)})
    return out


def kto_examples(n: int = 2000, seed: int = 0) -> list[dict]:
    """Alpaca-layout records with a boolean `label`: half right answers (desirable), half wrong ones."""
    return [{"instruction": p["instruction"], "output": p["chosen"] if i % 2 == 0 else p["rejected"],
             "label": i % 2 == 0} for i, p in enumerate(pairs(n, seed))]


def score_examples(n: int = 4, seed: int = 1) -> list[dict]:
    """Conversations for `lmforge score` with the reward model of the quickstart: `n` prompts it was not trained on
    (another seed), each answered right and then wrong (`examples/score_quickstart.jsonl`)."""
    trained = {p["instruction"] for p in pairs()}
    unseen = [p for p in pairs(20 * n, seed) if p["instruction"] not in trained][:n]
    return [{"messages": [{"role": "user", "content": p["instruction"]}, {"role": "assistant", "content": answer}]}
            for p in unseen for answer in (p["chosen"], p["rejected"])]


if __name__ == "__main__":
    for name, records in (("preference_quickstart.jsonl", pairs()), ("kto_quickstart.jsonl", kto_examples())):
        with open(os.path.join(sys.argv[1], name), "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)
    with open(os.path.join(sys.argv[2], "score_quickstart.jsonl"), "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in score_examples())
