"""ROUGE/BLEU against values worked out by hand on fixed strings (English and Chinese), not against the code."""

import pytest

from lmforge.metrics import text_scores, words

EN = ("the cat sat on the mat", "the cat is on the mat")
ZH = ("我爱北京天安门", "我爱北京")


def test_words_split_english_at_spaces_and_segment_chinese():
    assert words(EN[0]) == ["the", "cat", "sat", "on", "the", "mat"]
    assert words(ZH[0]) == ["我", "爱", "北京", "天安门"]


def test_scores_equal_the_hand_computed_values():
    # English: 5 of 6 unigrams shared; bigrams (the cat) (on the) (the mat): 3 of 5; LCS "the cat on the mat" = 5.
    # BLEU-4 n-gram precisions 5/6, 3/5, 1/4 and 0/3 -> NLTK method 3 gives 1/(2*3); equal lengths: no penalty.
    en = {"rouge-1": 5 / 6, "rouge-2": 3 / 5, "rouge-l": 5 / 6, "bleu-4": (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25}
    # Chinese (jieba: 我/爱/北京/天安门 vs 我/爱/北京): unigrams P 3/4 R 1; bigrams P 2/3 R 1; LCS 3.
    # BLEU-4: 3/4, 2/3, 1/2 and 0/1 -> 1/(2*1); the prediction is longer: no penalty.
    f1 = 2 * (3 / 4) / (3 / 4 + 1)
    zh = {"rouge-1": f1, "rouge-2": 2 * (2 / 3) / (2 / 3 + 1), "rouge-l": f1,
          "bleu-4": (3 / 4 * 2 / 3 * 1 / 2 * 1 / 2) ** 0.25}
    scores = text_scores([EN[0], ZH[0], "one and the same answer "], [EN[1], ZH[1], " one and the same answer"])
    for key in en:
        assert scores[key] == pytest.approx(100 * (en[key] + zh[key] + 1) / 3, abs=1e-3), key
    assert scores["exact_match"] == pytest.approx(100 / 3, abs=1e-3)


def test_nothing_in_common_scores_zero_and_empty_predictions_do_not_crash():
    scores = text_scores(["alpha beta", ""], ["gamma delta", "something"])
    assert scores == {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": 0.0, "exact_match": 0.0}
