"""Generate the classification quickstart data: one-line news items labelled by topic (sports, weather, food) in an
imbalanced 1:2:6 mix, as real label sets are. Each line names its topic through one or two of the topic's keywords
among everyday filler (no word of another topic: in a 1:2:6 mix, the majority's noise words would outnumber the rare
topic's own), so a classifier that learned the topics labels held-out lines it never saw. The held-out set
(`lmforge_cls_quickstart_heldout`) shares no line with the training set. Regenerate the shipped files with:

    python -m lmforge.resources.cls_quickstart src/lmforge/resources
"""

from __future__ import annotations

import json
import os
import random
import sys

TOPICS = {"sports": ["goal", "match", "team", "score", "coach", "league", "referee", "stadium"],
          "weather": ["rain", "sunny", "storm", "wind", "cloud", "snow", "frost", "thunder"],
          "food": ["bread", "soup", "apple", "cheese", "salad", "pasta", "butter", "noodles"]}
FILLER = ["the", "a", "today", "we", "saw", "some", "very", "and", "it", "was", "after", "near", "town", "news"]
MIX = {"sports": 1, "weather": 2, "food": 6}


def line(rng: random.Random, label: str) -> str:
    words = rng.sample(FILLER, rng.randint(4, 6)) + rng.sample(TOPICS[label], rng.choice((1, 1, 2)))
    rng.shuffle(words)
    return " ".join(words)


def generate(n: int = 900, seed: int = 0, exclude: frozenset[str] = frozenset()) -> list[dict[str, str]]:
    """`n` distinct lines (none in `exclude`), topics in the 1:2:6 mix, shuffled."""
    rng = random.Random(seed)
    total = sum(MIX.values())
    out: list[dict[str, str]] = []
    seen = set(exclude)
    for label, share in MIX.items():
        count = 0
        while count < n * share // total:
            text = line(rng, label)
            if text not in seen:
                seen.add(text)
                out.append({"text": text, "label": label})
                count += 1
    rng.shuffle(out)
    return out


def heldout(n: int = 90, seed: int = 1) -> list[dict[str, str]]:
    """Lines the training set (`generate()`) does not have."""
    return generate(n, seed, exclude=frozenset(r["text"] for r in generate()))


if __name__ == "__main__":
    for name, records in (("cls_quickstart.jsonl", generate()), ("cls_quickstart_heldout.jsonl", heldout())):
        with open(os.path.join(sys.argv[1], name), "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)
