"""Multiple-choice benchmarks in the MMLU / CMMLU / C-Eval file layouts, read and checked.

One CSV per subject and split, in `dev/` (few-shot examples) and `test/` (or `val/`):
- CMMLU: `test/agronomy.csv` with a header `,Question,A,B,C,D,Answer` (first column an index);
- MMLU: `test/abstract_algebra_test.csv`, no header: question, A, B, C, D, answer;
- C-Eval: `val/accountant_val.csv` with a header `id,question,A,B,C,D,answer,explanation`.
The choice columns are the single capital letters of the header (A-D, or more), in order.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from importlib import resources

from lmforge.errors import DataError
from lmforge.jsonl import read_json_mapping

OTHER = "Other"


@dataclass
class Question:
    question: str
    choices: list[str]
    answer: str  # a choice letter
    row: int  # line in the CSV file (1-based, header included), for error messages and predictions


@dataclass
class Subject:
    key: str
    name: str  # as written in prompts: "abstract algebra", "农学"
    category: str
    test: list[Question]
    dev: list[Question] = field(default_factory=list)

    @property
    def letters(self) -> list[str]:
        return [chr(ord("A") + i) for i in range(len(self.test[0].choices))]


@dataclass
class Benchmark:
    task: str
    path: str
    lang: str
    subjects: list[Subject]


def known_subjects() -> dict[str, dict]:
    """task -> {lang, subjects: {key: {name, category}}} for mmlu, cmmlu and ceval (categories as in their papers)."""
    text = resources.files("lmforge.resources").joinpath("benchmark_subjects.json").read_text(encoding="utf-8")
    return json.loads(text)


def benchmark_dir(task: str, task_dir: str) -> str:
    """`task_dir/task` (LLaMA-Factory's `evaluation/` layout) or `task_dir` itself when it holds the splits."""
    for path in (os.path.join(task_dir, task), task_dir):
        if os.path.isdir(path) and any(os.path.isdir(os.path.join(path, s)) for s in ("test", "val", "dev")):
            return path
    raise DataError(f"Benchmark '{task}': no folder with dev/ and test/ (or val/) CSV files at "
                    f"'{os.path.join(task_dir, task)}' or '{task_dir}'. Set `task_dir` to the benchmark's folder.")


def _subject_files(folder: str, split: str) -> dict[str, str]:
    """subject key -> CSV path; `name_test.csv`, `name_val.csv`, `name_dev.csv` lose their split suffix."""
    if not os.path.isdir(folder):
        return {}
    files = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".csv"):
            stem = name[:-4]
            files[stem.removesuffix(f"_{split}")] = os.path.join(folder, name)
    return files


def _columns(header: list[str], path: str) -> tuple[int, list[int], int]:
    """(question column, choice columns, answer column) from a header row."""
    lower = [h.strip().lower() for h in header]
    letters = [i for i, h in enumerate(header) if len(h.strip()) == 1 and h.strip().isupper()]
    missing = [name for name in ("question", "answer") if name not in lower]
    if missing or len(letters) < 2:
        what = f"'{missing[0]}'" if missing else "choice columns A, B, ..."
        raise DataError(f"{path}: the header has no {what} column (found: {', '.join(header)}). Expected "
                        "question, A, B, C, D, answer.")
    return lower.index("question"), letters, lower.index("answer")


def read_questions(path: str) -> list[Question]:
    """Every question of one subject file, checked: a question, non-missing choices, an answer among the letters."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise DataError(f"{path}: the file is empty: a subject needs at least one question.")
    first = [c.strip().lower() for c in rows[0]]
    if "question" in first or "answer" in first:
        q_col, choice_cols, a_col = _columns(rows[0], path)
        start = 1
    else:  # MMLU's header-less files
        if len(rows[0]) != 6:
            raise DataError(f"{path}: a file without a header must have 6 columns (question, A, B, C, D, answer); "
                            f"line 1 has {len(rows[0])}.")
        q_col, choice_cols, a_col, start = 0, [1, 2, 3, 4], 5, 0
    letters = [chr(ord("A") + i) for i in range(len(choice_cols))]
    width = max(q_col, a_col, *choice_cols) + 1
    questions = []
    for line, row in enumerate(rows[start:], start=start + 1):
        if len(row) < width:
            raise DataError(f"{path}, line {line}: {len(row)} columns, expected {width}.")
        answer = row[a_col].strip().upper()
        if answer not in letters:
            raise DataError(f"{path}, line {line}: answer '{row[a_col]}' is not one of {', '.join(letters)}.")
        if not row[q_col].strip():
            raise DataError(f"{path}, line {line}: the question is empty.")
        questions.append(Question(row[q_col].strip(), [row[c].strip() for c in choice_cols], answer, line))
    if not questions:
        raise DataError(f"{path}: the file has a header but no questions: a subject needs at least one.")
    return questions


def load_benchmark(task: str, task_dir: str, split: str = "test", n_shot: int = 5,
                   subjects: list[str] | None = None, max_samples: int | None = None) -> Benchmark:
    """The benchmark's subjects (sorted by key), each with its `split` questions and its dev examples."""
    path = benchmark_dir(task, task_dir)
    test_files = _subject_files(os.path.join(path, split), split)
    if not test_files:
        raise DataError(f"Benchmark '{task}': no CSV files in '{os.path.join(path, split)}' (split '{split}').")
    if subjects:
        unknown = [s for s in subjects if s not in test_files]
        if unknown:
            raise DataError(f"Benchmark '{task}': no subject '{unknown[0]}' in '{os.path.join(path, split)}' "
                            f"(it has {', '.join(list(test_files)[:8])}, ...).")
        test_files = {s: test_files[s] for s in subjects}
    dev_files = _subject_files(os.path.join(path, "dev"), "dev")
    info = known_subjects().get(task.lower(), {})
    mapping = _mapping(path) or info.get("subjects", {})
    result = []
    for key, test_path in test_files.items():
        questions = read_questions(test_path)[:max_samples]
        dev: list[Question] = []
        if n_shot:
            if key not in dev_files:
                raise DataError(f"Benchmark '{task}': subject '{key}' has no dev file in '{os.path.join(path, 'dev')}'"
                                f" for its {n_shot}-shot examples. Add one or set n_shot=0.")
            dev = read_questions(dev_files[key])
        if dev and len(dev[0].choices) != len(questions[0].choices):
            raise DataError(f"{dev_files[key]}: {len(dev[0].choices)} choices, but {test_path} has "
                            f"{len(questions[0].choices)}.")
        meta = mapping.get(key, {})
        result.append(Subject(key, meta.get("name", key.replace("_", " ")), meta.get("category", OTHER),
                              questions, dev))
    return Benchmark(task, path, info.get("lang", "en"), result)


def _mapping(path: str) -> dict[str, dict]:
    """A benchmark folder's own `mapping.json` (LLaMA-Factory's: subject -> {name, category}), if it has one."""
    mapping_path = os.path.join(path, "mapping.json")
    mapping = read_json_mapping(mapping_path, "each subject to {\"name\": ..., \"category\": ...}")
    if not all(isinstance(v, dict) for v in mapping.values()):
        raise DataError(f"Data error: '{mapping_path}' must map each subject to {{\"name\": ..., \"category\": ...}}.")
    return mapping
