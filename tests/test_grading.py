"""Grader on hand-written cases: `pytest tests/test_grading.py`. Every expected number is worked out in a comment."""

import pytest

from lmsleep.grading import contains, exact_match, grade, mean_ci95, normalize, token_f1


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The  Tallow-Bridge ferry!", "tallow bridge ferry"),
        ("An apple, a day.", "apple day"),
        ("Theatre and the anthem", "theatre and anthem"),  # articles only as whole words
        ("1,000 ships", "1000 ships"),  # thousands separator removed, not split
        ("Kovalenko's\n\tferry", "kovalenko s ferry"),  # punctuation -> space keeps the name a word
        ("«Ça va?»", "ça va"),  # Unicode punctuation too
        ("", ""),
    ],
)
def test_normalize(text, expected):
    assert normalize(text) == expected


def test_exact_match_ignores_case_punctuation_articles():
    assert exact_match("The Paris.", "paris")
    assert not exact_match("Paris, France", "Paris")


def test_contains_whole_words_only():
    assert contains("The ferry is run by Mira Kovalenko's family.", "Mira Kovalenko")
    assert contains("Art.", "the art")
    assert not contains("My partner", "art")  # a substring, not a word
    assert not contains("Kovalenko Mira", "Mira Kovalenko")  # order matters
    assert not contains("anything at all", "The")  # an answer that normalises to nothing matches nothing


def test_token_f1_by_hand():
    # pred [mira, kovalenko, runs, it], gold [mira, kovalenko]: overlap 2, P = 2/4, R = 2/2, F1 = 2*.5*1/1.5 = 2/3
    assert token_f1("Mira Kovalenko runs it", "Mira Kovalenko") == pytest.approx(2 / 3)
    # multiset overlap: pred {blue: 2, sky: 1}, gold {blue: 1, sky: 2} -> overlap 2, P = R = 2/3, F1 = 2/3
    assert token_f1("blue blue sky", "blue sky sky") == pytest.approx(2 / 3)
    # articles do not count: pred [cat], gold [cat] -> 1
    assert token_f1("the cat", "a cat") == 1.0
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("", "") == 1.0
    assert token_f1("something", "") == 0.0


def test_grade_correct_by_containment_or_f1():
    # contained although F1 is low: pred has 7 tokens, 1 shared -> P = 1/7, R = 1, F1 = 2*(1/7)/(8/7) = 1/4
    long = grade("It was definitely, without any doubt, Paris", "Paris", f1_threshold=0.5)
    assert long == {"correct": True, "em": False, "f1": pytest.approx(1 / 4)}
    # not contained ("mira k kovalenko"), but F1: P = 2/2, R = 2/3 -> 0.8 >= 0.5
    close = grade("Mira Kovalenko", "Mira K. Kovalenko", f1_threshold=0.5)
    assert close["correct"] and close["f1"] == pytest.approx(0.8)
    assert not grade("Mira Kovalenko", "Mira K. Kovalenko", f1_threshold=0.9)["correct"]
    assert grade("Tom", "Mira Kovalenko", 0.5) == {"correct": False, "em": False, "f1": 0.0}


def test_mean_ci95_wilson_for_proportions():
    # p = 0.5, n = 10: centre 0.5, half = 1.96/(1 + 3.8415/10) * sqrt(.025 + 3.8415/400) = 0.2634
    mean, low, high = mean_ci95([True] * 5 + [False] * 5)
    assert (mean, low, high) == pytest.approx((0.5, 0.2366, 0.7634), abs=1e-4)
    # all correct: Wilson does not collapse to a point; n = 5 -> low = 0.5655
    assert mean_ci95([True] * 5) == pytest.approx((1.0, 0.5655, 1.0), abs=1e-4)
    assert mean_ci95([0, 0], proportion=True)[0:2] == (0.0, 0.0)
    with pytest.raises(ValueError):
        mean_ci95([0.5, 1.0], proportion=True)


def test_mean_ci95_scores_that_happen_to_be_0_or_1_are_not_proportions():
    # F1 values 0.0 and 1.0 are floats: normal approximation, mean 0.5, s = 0.7071,
    # half = 1.96 * 0.7071 / sqrt(2) = 0.98
    assert mean_ci95([0.0, 1.0]) == pytest.approx((0.5, -0.48, 1.48), abs=1e-3)


def test_mean_ci95_normal_for_scores():
    # mean 0.4, s = 0.2, half = 1.96 * 0.2 / sqrt(3) = 0.22632
    assert mean_ci95([0.2, 0.4, 0.6]) == pytest.approx((0.4, 0.17368, 0.62632), abs=1e-4)
    assert mean_ci95([0.3]) == (0.3, 0.3, 0.3)
    with pytest.raises(ValueError):
        mean_ci95([])
