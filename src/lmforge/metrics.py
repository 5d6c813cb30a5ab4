"""Text-overlap metrics for generated answers: ROUGE-1/2/L (F1) and BLEU-4, on words (jieba segments Chinese).

Computed as LLaMA-Factory reports them (percent; BLEU with NLTK's smoothing method 3), so numbers are comparable.
ROUGE is a few lines of counting; the `rouge-chinese` package that LLaMA-Factory uses is an unmaintained fork, so we
count ourselves.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any


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


def classification_metrics(problem_type: str, logits: Any, labels: Any, threshold: float = 0.5) -> dict[str, float]:
    """scikit-learn's scores of a classifier's outputs: accuracy and precision/recall/F1 (macro, micro, weighted)
    for single-label; micro/macro F1 and exact-match ratio for multi-label; MSE/MAE/Pearson/Spearman for
    regression."""
    import numpy as np
    from sklearn import metrics

    logits, labels = np.asarray(logits), np.asarray(labels)
    if problem_type == "regression":
        from scipy import stats

        predicted, target = logits.reshape(-1), labels.reshape(-1)
        constant = np.std(predicted) == 0 or np.std(target) == 0
        return {"mse": float(metrics.mean_squared_error(target, predicted)),
                "mae": float(metrics.mean_absolute_error(target, predicted)),
                "pearson": float("nan") if constant else float(stats.pearsonr(predicted, target)[0]),
                "spearman": float("nan") if constant else float(stats.spearmanr(predicted, target)[0])}
    if problem_type == "multi_label_classification":
        predicted = (1 / (1 + np.exp(-logits)) >= threshold).astype(int)
        target = labels.astype(int)
        return {"exact_match": float(metrics.accuracy_score(target, predicted)),
                "f1_micro": float(metrics.f1_score(target, predicted, average="micro", zero_division=0)),
                "f1_macro": float(metrics.f1_score(target, predicted, average="macro", zero_division=0))}
    predicted = logits.argmax(-1)
    out = {"accuracy": float(metrics.accuracy_score(labels, predicted))}
    for average in ("macro", "micro", "weighted"):
        p, r, f, _ = metrics.precision_recall_fscore_support(labels, predicted, average=average, zero_division=0)
        out.update({f"precision_{average}": float(p), f"recall_{average}": float(r), f"f1_{average}": float(f)})
    return out


def classifier_predictions(logits: Any, problem_type: str, names: list[str], threshold: float) -> list[dict[str, Any]]:
    """Each row's prediction: the label (or labels, or value) and the probabilities by class name."""
    import numpy as np

    logits = np.asarray(logits, dtype=np.float64)
    if problem_type == "regression":
        return [{"predicted": float(v)} for v in logits.reshape(-1)]
    if problem_type == "multi_label_classification":
        probs = 1 / (1 + np.exp(-logits))
        return [{"predicted": [n for n, p in zip(names, row, strict=True) if p >= threshold],
                 "probabilities": {n: round(float(p), 6) for n, p in zip(names, row, strict=True)}} for row in probs]
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    probs = shifted / shifted.sum(-1, keepdims=True)
    return [{"predicted": names[int(row.argmax())],
             "probabilities": {n: round(float(p), 6) for n, p in zip(names, row, strict=True)}} for row in probs]
