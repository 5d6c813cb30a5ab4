"""Generate the reasoning quickstart data: sums and differences of numbers up to nine, asked in words, worked out by
counting in a reasoning block, and answered in digits.

    What is three plus four?
    <think>
    Count up four from three: four (one), five (two), six (three), seven (four); seven is 7.
    </think>
    The answer is 7.

The reasoning is a procedure, not a memorised fact: each step is the next (or previous) number word, the counter
beside it says when to stop (when it reaches the second number), and the number reached is written in digits. So a
model that has learnt the procedure on some pairs of numbers can work out pairs it never saw, and a counting slip
anywhere ends in a wrong answer: what the `math_verify` reward checks.

The SFT examples (`lmforge_arithmetic_sft`) show each problem both ways, as instruction data mixing reasoning and
non-reasoning replies does: worked out as above, and answered bare (an empty `<think>\n\n</think>`, the way Qwen3
writes a reply without thinking). On a problem it has seen, a bare answer is a remembered fact; on one it has not, a
guess. GRPO (`lmforge_arithmetic`, problems SFT never showed; the `answer` column is the reference) rewards verified
answers (`math_verify`) and the reasoning layout (`format`, which an empty reasoning block fails), so the model learns
to work problems out, and that carries over to the held-out problems (`lmforge_arithmetic_heldout`), pairs of numbers
neither training file asks about.
Regenerate the shipped files with:

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
    """The worked reasoning: count `b` steps up (plus) or down (minus) from `a`, numbering the steps, then the
    number reached in digits."""
    direction = 1 if op == "plus" else -1
    steps = ", ".join(f"{NUMBERS[a + direction * i]} ({NUMBERS[i]})" for i in range(1, b + 1))
    result = a + direction * b
    return (f"Count {'up' if op == 'plus' else 'down'} {NUMBERS[b]} from {NUMBERS[a]}: {steps or 'no steps'}; "
            f"{NUMBERS[result]} is {result}.")


def record(a: int, op: str, b: int, result: int, question: str, worked: bool = True) -> dict[str, str]:
    reasoning = f"\n{counting(a, op, b)}\n" if worked else "\n\n"
    return {"instruction": question.format(a=NUMBERS[a], op=op, b=NUMBERS[b]),
            "output": f"<think>{reasoning}</think>\nThe answer is {result}.", "answer": str(result)}


FILES = ("arithmetic_quickstart.jsonl", "arithmetic_quickstart_rl.jsonl", "arithmetic_quickstart_heldout.jsonl")


def split(seed: int = 0, rl_share: float = 0.2, heldout_share: float = 0.2
          ) -> tuple[list[dict], list[dict], list[dict]]:
    """Three disjoint sets of problems, every phrasing of each: (SFT examples, each problem worked out and answered
    bare; problems for GRPO; held-out problems). GRPO's problems are ones SFT never showed, so their rewards are
    earned by working them out, as on the held-out problems (on problems SFT taught, GRPO would reinforce remembered
    answers); three phrasings of each held-out problem make its accuracy less noisy than one would."""
    rng = random.Random(seed)
    pool = problems()
    rng.shuffle(pool)
    held, rl = int(len(pool) * heldout_share), int(len(pool) * rl_share)
    sets = pool[held + rl:], pool[held: held + rl], pool[:held]
    sft, rl_records, heldout = ([record(*p, q) for p in problems_ for q in QUESTIONS] for problems_ in sets)
    sft += [record(*p, q, worked=False) for p in sets[0] for q in QUESTIONS]
    rng.shuffle(sft)
    rng.shuffle(rl_records)
    return sft, rl_records, heldout


if __name__ == "__main__":
    for name, records in zip(FILES, split(), strict=True):
        with open(os.path.join(sys.argv[1], name), "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)
