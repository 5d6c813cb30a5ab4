"""Generate the reasoning quickstart data: sums and differences of numbers up to nine, asked in words, worked out by
counting in a reasoning block, and answered in digits.

    What is three plus four?
    <think>
    Count up four from three: four (one), five (two), six (three), seven (four).
    </think>
    The answer is 7.

The reasoning is a procedure, not a memorised fact: each step is the next (or previous) number word, and the counter
beside it says when to stop (when it reaches the second number). So a model that has learnt the procedure on some
pairs of numbers can work out pairs it never saw, and a counting slip anywhere ends in a wrong answer: what the
`math_verify` reward checks. The model learns the layout and the procedure from the worked examples
(`lmforge_arithmetic_sft`, the reasoning quickstart's SFT), then improves on its own samples checked by `math_verify`
and `format` rewards (`lmforge_arithmetic`, GRPO; the `answer` column is the reference). The held-out problems
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


def counting(a: int, op: str, b: int) -> str:
    """The worked reasoning: count `b` steps up (plus) or down (minus) from `a`, numbering the steps."""
    direction = 1 if op == "plus" else -1
    steps = ", ".join(f"{NUMBERS[a + direction * i]} ({NUMBERS[i]})" for i in range(1, b + 1))
    return f"Count {'up' if op == 'plus' else 'down'} {NUMBERS[b]} from {NUMBERS[a]}: {steps or 'no steps'}."


def record(a: int, op: str, b: int, result: int, question: str) -> dict[str, str]:
    return {"instruction": question.format(a=NUMBERS[a], op=op, b=NUMBERS[b]),
            "output": f"<think>\n{counting(a, op, b)}\n</think>\nThe answer is {result}.", "answer": str(result)}


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
