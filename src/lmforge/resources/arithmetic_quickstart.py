"""Generate the reasoning quickstart data: sums and differences of numbers up to nine, asked in words, answered with
a short reasoning block and the result in digits.

    What is three plus four?
    <think>
    Three plus four is seven.
    </think>
    The answer is 7.

The pretraining quickstart corpus states these facts in words ("Three plus four is seven."), so the reasoning is
something the base model has read; the answer in digits is what it must learn, first from the worked examples
(`lmforge_arithmetic_sft`, the reasoning quickstart's SFT), then from its own samples checked by `math_verify` and
`format` rewards (`lmforge_arithmetic`, GRPO; the `answer` column is the reference). The held-out problems
(`lmforge_arithmetic_heldout`) are pairs of numbers the training files never ask about. Regenerate the shipped file
with:

    python -m lmforge.resources.arithmetic_quickstart src/lmforge/resources
"""

from __future__ import annotations

import json
import os
import random
import sys

from lmforge.resources.quickstart_corpus import NUMBERS

QUESTIONS = ("What is {a} {op} {b}?", "Compute {a} {op} {b}.", "How much is {a} {op} {b}?")


def problems() -> list[tuple[int, str, int, int]]:
    """Every (a, operation, b, result) of the corpus' facts: a + b and a - b (a >= b) for a, b from 0 to 9."""
    out = [(a, "plus", b, a + b) for a in range(10) for b in range(10)]
    return out + [(a, "minus", b, a - b) for a in range(10) for b in range(a + 1)]


def record(a: int, op: str, b: int, result: int, question: str) -> dict[str, str]:
    fact = f"{NUMBERS[a].capitalize()} {op} {NUMBERS[b]} is {NUMBERS[result]}."
    return {"instruction": question.format(a=NUMBERS[a], op=op, b=NUMBERS[b]),
            "output": f"<think>\n{fact}\n</think>\nThe answer is {result}.", "answer": str(result)}


def split(seed: int = 0, heldout_share: float = 0.2) -> tuple[list[dict], list[dict]]:
    """(training records: every phrasing of 80 % of the problems, held-out records: every phrasing of the rest; three
    phrasings of each held-out problem make the held-out accuracy less noisy than one would)."""
    rng = random.Random(seed)
    pool = problems()
    rng.shuffle(pool)
    cut = int(len(pool) * heldout_share)
    heldout = [record(*p, q) for p in pool[:cut] for q in QUESTIONS]
    train = [record(*p, q) for p in pool[cut:] for q in QUESTIONS]
    rng.shuffle(train)
    return train, heldout


if __name__ == "__main__":
    train, heldout = split()
    for name, records in (("arithmetic_quickstart.jsonl", train), ("arithmetic_quickstart_heldout.jsonl", heldout)):
        with open(os.path.join(sys.argv[1], name), "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)
