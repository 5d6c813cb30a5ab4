"""A tiny synthetic multiple-choice benchmark and its training set, generated: "Which of these is a colour?" with one
colour among words of other categories, at a random letter.

`write_benchmark(folder)` writes it in the CMMLU layout (`dev/` and `test/`, one CSV per category) for `lmforge eval`;
`training_records()` gives SFT conversations (openai `messages`) that ask the same kind of question in exactly the
prompt `lmforge eval` builds (zero-shot, chat), answered with the letter. The splits hold different questions, so
the benchmark's test split is held out from training.

    python -m lmforge.resources.mc_quickstart OUT_DIR
    # OUT_DIR/benchmark/{dev,test}/*.csv, OUT_DIR/train_letter.jsonl and OUT_DIR/train_loglik.jsonl
"""

from __future__ import annotations

import csv
import os
import random
import sys

from lmforge.eval.benchmarks import Question, Subject
from lmforge.eval.prompts import PromptStyle
from lmforge.jsonl import write_jsonl

WORDS = {
    "colour": ["red", "blue", "green", "yellow", "purple", "orange", "pink", "brown", "black", "white", "grey",
               "violet"],
    "animal": ["dog", "cat", "horse", "lion", "tiger", "mouse", "rabbit", "sheep", "goat", "wolf", "bear", "fox"],
    "fruit": ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum", "melon", "kiwi",
              "lime"],
    "tool": ["hammer", "saw", "drill", "wrench", "chisel", "spade", "rake", "axe", "file", "pliers", "ladder",
             "shovel"],
}
LETTERS = ["A", "B", "C", "D"]


def make_question(rng: random.Random, category: str) -> Question:
    answer_word = rng.choice(WORDS[category])
    others = [w for c, words in WORDS.items() if c != category for w in words]
    choices = [answer_word, *rng.sample(others, 3)]
    rng.shuffle(choices)
    article = "an" if category[0] in "aeiou" else "a"
    return Question(f"Which of these is {article} {category}?", choices, LETTERS[choices.index(answer_word)], row=0)


def _questions(seed: int, per_category: int, exclude: set[tuple] = frozenset()) -> dict[str, list[Question]]:
    rng = random.Random(seed)
    result: dict[str, list[Question]] = {}
    for category in WORDS:
        found: list[Question] = []
        seen = set(exclude)
        while len(found) < per_category:
            q = make_question(rng, category)
            key = (q.question, *q.choices)
            if key not in seen:
                seen.add(key)
                found.append(q)
        result[category] = found
    return result


def subject_name(category: str) -> str:
    return f"{category}s"


def training_records(n_per_category: int = 300, seed: int = 0, scoring: str = "letter") -> list[dict]:
    """SFT conversations: the zero-shot chat prompt `lmforge eval` builds for `scoring` (English), answered as it
    expects: the letter (`letter`), or the option's text (`loglik`, cloze-style)."""
    style = PromptStyle(chat=True, lang="en", list_options=scoring == "letter")
    records = []
    for category, questions in _questions(seed, n_per_category).items():
        header = style.wording["header"].format(subject=subject_name(category))
        for q in questions:
            records.append({"messages": [{"role": "user", "content": header + style.question_text(q, LETTERS)},
                                         {"role": "assistant", "content": style.answer_text(q, LETTERS)}]})
    random.Random(seed).shuffle(records)
    return records


def benchmark_subjects(n_test: int = 50, n_dev: int = 5, seed: int = 1, train_seed: int = 0,
                       n_train: int = 300) -> list[Subject]:
    """Dev and test questions, none of which is a training question."""
    train = {(q.question, *q.choices) for qs in _questions(train_seed, n_train).values() for q in qs}
    held_out = _questions(seed, n_test + n_dev, exclude=train)
    return [Subject(category, subject_name(category), "synthetic", qs[n_dev:], qs[:n_dev])
            for category, qs in held_out.items()]


def write_benchmark(folder: str, n_test: int = 50, n_dev: int = 5, seed: int = 1, n_train: int = 300) -> str:
    """The benchmark in the CMMLU layout under `folder` (with a `mapping.json` naming the subjects)."""
    import json

    subjects = benchmark_subjects(n_test, n_dev, seed, n_train=n_train)
    for split in ("dev", "test"):
        os.makedirs(os.path.join(folder, split), exist_ok=True)
    for subject in subjects:
        for split, questions in (("dev", subject.dev), ("test", subject.test)):
            with open(os.path.join(folder, split, f"{subject.key}.csv"), "w", encoding="utf-8", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["", "Question", *LETTERS, "Answer"])
                for i, q in enumerate(questions):
                    writer.writerow([i, q.question, *q.choices, q.answer])
    with open(os.path.join(folder, "mapping.json"), "w", encoding="utf-8") as fh:
        json.dump({s.key: {"name": s.name, "category": s.category} for s in subjects}, fh, indent=1)
    return folder


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    out = argv[0]
    write_benchmark(os.path.join(out, "benchmark"))
    for scoring in ("letter", "loglik"):
        write_jsonl(os.path.join(out, f"train_{scoring}.jsonl"), training_records(scoring=scoring))
    print(f"Wrote {out}/benchmark (dev/test CSVs), {out}/train_letter.jsonl and {out}/train_loglik.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
