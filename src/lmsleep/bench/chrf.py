"""chrF (Popović 2015), as sacreBLEU computes it by default: character n-grams of orders 1..6, beta = 2.

    python -c "from lmsleep.bench.chrf import chrf; print(chrf('the cat sat', 'the cat sat on the mat'))"  # 49.59

Whitespace is removed before the n-grams are taken (sacreBLEU's `whitespace=False`), case is kept, and there are no
word n-grams (chrF, not chrF++). For each order n the hypothesis and the reference give n-gram counts; matches are
clipped counts. Precision and recall are averaged over the orders for which BOTH strings have n-grams (sacreBLEU's
"effective order"), then combined as F_beta = (1 + beta^2) P R / (beta^2 P + R), on a 0-100 scale. An empty hypothesis
or reference scores 0. `corpus_chrf` sums the statistics over sentences first (sacreBLEU's corpus score); the
benchmarks report the mean of sentence scores, which is what a per-probe grade can carry.

Checked against sacrebleu 2.x's `CHRF().sentence_score` in tests/test_bench_languages.py (skipped when sacrebleu is
not installed; it is not a dependency of this project).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

CHAR_ORDER = 6
BETA = 2


def char_ngrams(text: str, order: int) -> list[Counter]:
    """Counters of the character n-grams of orders 1..order of `text` with its whitespace removed."""
    text = "".join(text.split())
    return [Counter(text[i : i + n] for i in range(len(text) - n + 1)) for n in range(1, order + 1)]


def statistics(hypothesis: str, reference: str, order: int = CHAR_ORDER) -> list[tuple[int, int, int]]:
    """Per order: (hypothesis n-grams, reference n-grams, clipped matches)."""
    out = []
    for hyp, ref in zip(char_ngrams(hypothesis, order), char_ngrams(reference, order)):
        matches = sum(min(count, ref[gram]) for gram, count in hyp.items() if gram in ref)
        # sacreBLEU counts no hypothesis n-grams of an order the reference lacks (they cannot match anyway)
        out.append((sum(hyp.values()) if ref else 0, sum(ref.values()), matches))
    return out


def f_score(stats: Sequence[tuple[int, int, int]], beta: float = BETA) -> float:
    """chrF on 0-100 from per-order statistics: mean precision and recall over the effective orders, then F_beta."""
    precisions, recalls = [], []
    for n_hyp, n_ref, n_match in stats:
        if n_hyp > 0 and n_ref > 0:
            precisions.append(n_match / n_hyp)
            recalls.append(n_match / n_ref)
    if not precisions:
        return 0.0
    p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    if p + r == 0:
        return 0.0
    factor = beta**2
    return 100 * (1 + factor) * p * r / (factor * p + r)


def chrf(hypothesis: str, reference: str, order: int = CHAR_ORDER, beta: float = BETA) -> float:
    """Sentence-level chrF of one hypothesis against one reference, 0-100."""
    return f_score(statistics(hypothesis, reference, order), beta)


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str], order: int = CHAR_ORDER,
                beta: float = BETA) -> float:
    """Corpus-level chrF: statistics summed over sentence pairs, then one F_beta."""
    if len(hypotheses) != len(references):
        raise ValueError(f"corpus_chrf: {len(hypotheses)} hypotheses but {len(references)} references")
    totals = [[0, 0, 0] for _ in range(order)]
    for hyp, ref in zip(hypotheses, references):
        for total, stat in zip(totals, statistics(hyp, ref, order)):
            for i in range(3):
                total[i] += stat[i]
    return f_score([tuple(t) for t in totals], beta)
