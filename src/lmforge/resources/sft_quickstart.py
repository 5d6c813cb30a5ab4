"""Generate the SFT quickstart data: instructions whose answers follow from the prompt by a simple rule.

Each answer can be computed from its instruction (repeat words, name the first or last word, count them), so a
model that learned the task answers held-out prompts it never saw exactly; exact match on held-out prompts measures
learning. Every instruction appears once, and the held-out set (`lmforge_sft_quickstart_heldout`) shares none with
the training set, so held-out figures are about prompts the model never saw. Words come from the quickstart corpus
vocabulary, so the pretraining quickstart model knows them. Regenerate the shipped files with:

    python -m lmforge.resources.sft_quickstart src/lmforge/resources
"""

from __future__ import annotations

import json
import os
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


def generate(n: int = 4000, seed: int = 0, exclude: frozenset[str] = frozenset()) -> list[dict[str, str]]:
    """`n` examples with distinct instructions, none of them in `exclude`."""
    rng = random.Random(seed)
    out: list[dict[str, str]] = []
    seen = set(exclude)
    while len(out) < n:
        ex = example(rng)
        if ex["instruction"] not in seen:
            seen.add(ex["instruction"])
            out.append(ex)
    return out


def heldout(n: int = 200, seed: int = 1) -> list[dict[str, str]]:
    """Examples whose instructions the training set (`generate()`) does not have."""
    return generate(n, seed, exclude=frozenset(r["instruction"] for r in generate()))


if __name__ == "__main__":
    for name, records in (("sft_quickstart.jsonl", generate()), ("sft_quickstart_heldout.jsonl", heldout())):
        with open(os.path.join(sys.argv[1], name), "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)
