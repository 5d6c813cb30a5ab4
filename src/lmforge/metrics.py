"""Text-overlap metrics for generated answers: ROUGE-1/2/L (F1) and BLEU-4, on words (jieba segments Chinese).

Computed as LLaMA-Factory reports them (percent; BLEU with NLTK's smoothing method 3), so numbers are comparable.
ROUGE is a few lines of counting; the `rouge-chinese` package that LLaMA-Factory uses is an unmaintained fork, so we
count ourselves.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable


def words(text: str) -> list[str]:
    """Words of `text`: jieba segments Chinese and splits other text at spaces and punctuation."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return [w for w in jieba.cut(text) if w.strip()]


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1))


def _f1(overlap: int, predicted: int, reference: int) -> float:
    if overlap == 0 or predicted == 0 or reference == 0:
        return 0.0
    precision, recall = overlap / predicted, overlap / reference
    return 2 * precision * recall / (precision + recall)


def rouge_n(prediction: list[str], reference: list[str], n: int) -> float:
    p, r = _ngrams(prediction, n), _ngrams(reference, n)
    return _f1(sum((p & r).values()), sum(p.values()), sum(r.values()))


def _lcs(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: list[str], reference: list[str]) -> float:
    return _f1(_lcs(prediction, reference), len(prediction), len(reference))


def bleu4(prediction: list[str], reference: list[str]) -> float:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    if not prediction or not reference:
        return 0.0
    return sentence_bleu([reference], prediction, smoothing_function=SmoothingFunction().method3)


def text_scores(predictions: Iterable[str], references: Iterable[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L and BLEU-4 (percent) and exact match (percent, after stripping) over pairs."""
    totals: Counter = Counter()
    count = 0
    for prediction, reference in zip(predictions, references, strict=True):
        p, r = words(prediction), words(reference)
        totals["rouge-1"] += rouge_n(p, r, 1)
        totals["rouge-2"] += rouge_n(p, r, 2)
        totals["rouge-l"] += rouge_l(p, r)
        totals["bleu-4"] += bleu4(p, r)
        totals["exact_match"] += float(prediction.strip() == reference.strip())
        count += 1
    return {k: round(100 * totals[k] / max(count, 1), 4)
            for k in ("rouge-1", "rouge-2", "rouge-l", "bleu-4", "exact_match")}
