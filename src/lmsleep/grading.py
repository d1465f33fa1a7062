"""Local answer grading (no external API, no judge model): SQuAD-style normalisation, containment and token F1.

Used by the `evaluate` stage (`lmsleep evaluate --night <id>`); try it alone with

    python -c "from lmsleep.grading import grade; print(grade('It is run by Mira Kovalenko.', 'Mira Kovalenko', 0.5))"

A prediction is *correct* when the normalised expected answer occurs in it as whole words, or when its token F1 with
the answer reaches a threshold. Containment is lenient on purpose: small instruct models wrap answers in sentences
("The ferry is run by Mira Kovalenko."), and exact match would score that as wrong.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

ARTICLES = re.compile(r"\b(a|an|the)\b")
DIGIT_SEPARATOR = re.compile(r"(?<=\d)[,_](?=\d{3}\b)")  # 1,000 -> 1000 so "1,000" and "1000" agree
Z95 = 1.959963984540054


def normalize(text: str) -> str:
    """Lower-case, drop punctuation, the articles a/an/the and extra whitespace.

    Unlike SQuAD's script, punctuation becomes a space rather than vanishing, so "Kovalenko's" still contains the
    word "kovalenko"; thousands separators between digits are removed first so numbers are not split.
    """
    text = DIGIT_SEPARATOR.sub("", text.lower())
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    text = ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answer: str) -> bool:
    return normalize(prediction) == normalize(answer)


def contains(prediction: str, answer: str) -> bool:
    """The normalised answer occurs in the normalised prediction as whole words ("art" is not in "partner")."""
    needle = normalize(answer)
    if not needle:
        return False  # an answer that normalises to nothing would be "contained" in anything
    return f" {needle} " in f" {normalize(prediction)} "


def token_f1(prediction: str, answer: str) -> float:
    """Harmonic mean of token precision and recall over normalised tokens (multiset overlap, as in SQuAD)."""
    predicted, expected = normalize(prediction).split(), normalize(answer).split()
    if not predicted or not expected:
        return float(predicted == expected)  # both empty: 1.0, one empty: 0.0
    overlap = sum((Counter(predicted) & Counter(expected)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(expected)
    return 2 * precision * recall / (precision + recall)


def grade(prediction: str, answer: str, f1_threshold: float) -> dict[str, float | bool]:
    """{"correct", "em", "f1"} for one prediction; correct = answer contained, or F1 >= f1_threshold."""
    f1 = token_f1(prediction, answer)
    correct = contains(prediction, answer) or f1 >= f1_threshold
    return {"correct": correct, "em": exact_match(prediction, answer), "f1": f1}


def mean_ci95(values: Sequence[float | bool], proportion: bool | None = None) -> tuple[float, float, float]:
    """(mean, low, high) of a 95% interval for the mean.

    Proportions (accuracies: all values bool, or proportion=True) get the Wilson score interval: unlike the normal
    approximation it stays inside [0, 1] and does not collapse to a point at 0% or 100%, which matters with the few
    dozen probes a night brings. Other values (F1 scores) get the normal approximation mean +- 1.96 * s / sqrt(n),
    which is a point when n == 1 or all values are equal.
    """
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci95 needs at least one value")
    if proportion is None:
        proportion = all(isinstance(v, bool) for v in values)
    mean = sum(float(v) for v in values) / n
    if proportion:
        if any(float(v) not in (0.0, 1.0) for v in values):
            raise ValueError("a proportion's values must all be 0 or 1")
        z2 = Z95 * Z95
        centre = (mean + z2 / (2 * n)) / (1 + z2 / n)
        half = Z95 / (1 + z2 / n) * math.sqrt(mean * (1 - mean) / n + z2 / (4 * n * n))
        # clamp: at 0% or 100% rounding can put the bound a hair on the wrong side of the mean
        return mean, min(mean, max(0.0, centre - half)), max(mean, min(1.0, centre + half))
    if n == 1:
        return mean, mean, mean
    variance = sum((float(v) - mean) ** 2 for v in values) / (n - 1)
    half = Z95 * math.sqrt(variance / n)
    return mean, mean - half, mean + half
