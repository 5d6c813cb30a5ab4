"""Generate the SFT quickstart data: instructions whose answers follow from the prompt by a simple rule.

Each answer can be computed from its instruction (repeat words, name the first or last word, count them), so a
model that learned the task answers held-out prompts it never saw exactly; exact match on held-out prompts measures
learning. Words come from the quickstart corpus vocabulary, so the pretraining quickstart model knows them.
Regenerate the shipped file with:

    python -m lmforge.resources.sft_quickstart src/lmforge/resources/sft_quickstart.jsonl
"""

from __future__ import annotations

import json
import random
import sys

from lmforge.resources.quickstart_corpus import ANIMALS, COLORS, NUMBERS, OBJECTS, PLACES

WORDS = ANIMALS + COLORS + OBJECTS + PLACES


def example(rng: random.Random) -> dict[str, str]:
    words = rng.sample(WORDS, rng.randint(2, 4))
    phrase = " ".join(words)
    task = rng.randrange(4)
    if task == 0:
        return {"instruction": f"Repeat these words: {phrase}", "output": phrase}
    if task == 1:
        return {"instruction": f"What is the first word of: {phrase}", "output": words[0]}
    if task == 2:
        return {"instruction": f"What is the last word of: {phrase}", "output": words[-1]}
    return {"instruction": f"How many words are in: {phrase}", "output": NUMBERS[len(words)]}


def generate(n: int = 4000, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [example(rng) for _ in range(n)]


if __name__ == "__main__":
    with open(sys.argv[1], "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in generate())
