"""Multiple-choice evaluation: each question's options scored, the best one predicted, accuracy per subject,
category and overall."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lmforge.config.evaluation import EvalArguments
from lmforge.errors import DataError
from lmforge.eval.benchmarks import Benchmark, Subject
from lmforge.eval.prompts import PromptStyle, build_prompt
from lmforge.eval.scoring import Request, Score, score_questions

logger = logging.getLogger(__name__)


@dataclass
class SubjectRequests:
    shots: int
    prompts: list[str]
    questions: list[list[Request]]  # per question: one request (letter) or one per option (loglik)


class Encoder:
    """Token ids of prompts and answers: a rendered chat prompt holds its special tokens already; a plain prompt
    gets the tokenizer's own (BOS)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, style: PromptStyle):
        self.tokenizer, self.style = tokenizer, style

    def ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of many texts in one batched (fast-tokenizer) call."""
        return self.tokenizer(texts, add_special_tokens=not self.style.chat)["input_ids"]

    def continuations(self, prompts: list[str], prompt_ids: list[list[int]], answers: list[str]) -> list[list[int]]:
        """The tokens each answer adds after its prompt, as the whole text tokenizes (as lm-evaluation-harness
        does); the answer alone where the tokenizer merges across the boundary."""
        texts = [self.style.continuation(a) for a in answers]
        wholes = self.ids([p + t for p, t in zip(prompts, texts, strict=True)])
        result = []
        for ids, whole, text in zip(prompt_ids, wholes, texts, strict=True):
            if whole[: len(ids)] == ids and len(whole) > len(ids):
                result.append(whole[len(ids):])
            else:
                result.append(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return result

    def letter_ids(self, prompt: str, prompt_ids: list[int], letters: list[str]) -> list[int]:
        ids = [c[0] for c in self.continuations([prompt] * len(letters), [prompt_ids] * len(letters), letters)]
        if len(set(ids)) != len(ids):
            raise DataError(f"The choice letters {', '.join(letters)} do not start with distinct tokens after the "
                            "prompt; use `scoring: loglik`.")
        return ids


def subject_requests(encoder: Encoder, subject: Subject, shots: int, letter_scoring: bool) -> SubjectRequests:
    prompts = [build_prompt(encoder.tokenizer, encoder.style, subject, q, shots) for q in subject.test]
    prompt_ids = encoder.ids(prompts)
    if letter_scoring:  # the letters tokenize the same way after every prompt of a subject
        candidates = encoder.letter_ids(prompts[0], prompt_ids[0], subject.letters)
        return SubjectRequests(shots, prompts, [[Request(ids, candidates=candidates)] for ids in prompt_ids])
    n = len(subject.letters)
    options = encoder.continuations([p for p in prompts for _ in range(n)], [i for i in prompt_ids for _ in range(n)],
                                    [c for q in subject.test for c in q.choices])
    questions = [[Request(ids + o, n_target=len(o)) for o in options[q * n: (q + 1) * n]]
                 for q, ids in enumerate(prompt_ids)]
    return SubjectRequests(shots, prompts, questions)


def fitting_requests(encoder: Encoder, subject: Subject, n_shot: int, letter_scoring: bool,
                     max_length: int | None) -> SubjectRequests:
    """The subject's requests with as many solved examples (up to `n_shot`) as fit the model's context; the same
    number for every question, so they all share the few-shot prefix."""
    shots = min(n_shot, len(subject.dev))
    while True:
        built = subject_requests(encoder, subject, shots, letter_scoring)
        longest = max(len(r.ids) + (1 if r.candidates else 0) for q in built.questions for r in q)
        if max_length is None or longest <= max_length or shots == 0:
            if max_length is not None and longest > max_length:
                logger.warning("%s: the longest question is %d tokens, more than the model's %d positions even "
                               "without examples", subject.key, longest, max_length)
            return built
        shots -= 1


def evaluate_benchmark(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, bench: Benchmark,
                       args: EvalArguments, style: PromptStyle) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(results, predictions): accuracy in percent per subject, per category and over all questions."""
    encoder = Encoder(tokenizer, style)
    letter_scoring = args.scoring == "letter"
    max_length = getattr(model.config, "max_position_embeddings", None)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    subjects: dict[str, dict[str, Any]] = {}
    predictions: list[dict[str, Any]] = []
    total = sum(len(s.test) for s in bench.subjects)
    with tqdm(total=total, desc=bench.task, unit="q") as bar:
        for subject in bench.subjects:
            bar.set_postfix_str(subject.key)
            built = fitting_requests(encoder, subject, args.n_shot, letter_scoring, max_length)
            if subject is bench.subjects[0]:  # what is scored, shown once
                logger.info("The prompt of %s, question 1:\n%s", subject.key, built.prompts[0])
            scores = score_questions(model, built.questions, args.batch_size, pad_id, args.prefix_reuse, bar.update)
            correct = 0
            for question, question_scores in zip(subject.test, scores, strict=True):
                values = _option_values(question_scores, question.choices, letter_scoring,
                                        args.scoring == "loglik_norm")
                best = max(range(len(values)), key=values.__getitem__)
                prediction = subject.letters[best]
                correct += prediction == question.answer
                predictions.append({"subject": subject.key, "row": question.row, "answer": question.answer,
                                    "prediction": prediction, "correct": prediction == question.answer,
                                    "scores": dict(zip(subject.letters, values, strict=True))})
            subjects[subject.key] = {"name": subject.name, "category": subject.category, "shots": built.shots,
                                     "questions": len(subject.test), "correct": correct,
                                     "accuracy": 100 * correct / len(subject.test)}
    return summarise(subjects), predictions


def _option_values(scores: list[Score], choices: list[str], letter_scoring: bool, normalise: bool) -> list[float]:
    """One number per option, higher is better: the letter's log-prob, or the option text's (normalised) loglik."""
    if letter_scoring:
        return scores[0].candidate_logps
    totals = [sum(s.target_logps) for s in scores]
    if normalise:  # per character of the option's text, as lm-evaluation-harness's acc_norm
        return [t / max(len(c), 1) for t, c in zip(totals, choices, strict=True)]
    return totals


def summarise(subjects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Accuracy over all questions (`average`), the mean over subjects, and per category."""
    by_category: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for s in subjects.values():
        by_category[s["category"]][0] += s["correct"]
        by_category[s["category"]][1] += s["questions"]
    correct = sum(s["correct"] for s in subjects.values())
    questions = sum(s["questions"] for s in subjects.values())
    return {
        "unit": "percent",
        "average": 100 * correct / questions,
        "subject_average": math.fsum(s["accuracy"] for s in subjects.values()) / len(subjects),
        "questions": questions,
        "categories": {c: {"accuracy": 100 * k / n, "questions": n} for c, (k, n) in sorted(by_category.items())},
        "subjects": subjects,
    }
