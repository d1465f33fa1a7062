"""Benchmark arithmetic: continual-learning metrics from an accuracy matrix, and intervals across seeds.

    python -c "from lmsleep.bench.metrics import retention_metrics as r; print(r([[.5, .1], [.4, .6]], [.1, .2]))"

Accuracy matrix (Lopez-Paz & Ranzato 2017, "GEM"): with T tasks learned in order 0..T-1,
R[i][j] = accuracy on task j after training through task i (row i = the model after task i). An optional baseline
vector b[j] = accuracy on task j of the model before any training (our `base`: the same model, no sleep).

    ACC        = 1/T     sum_j        R[T-1][j]                          average final accuracy
    BWT        = 1/(T-1) sum_{j<T-1}  (R[T-1][j] - R[j][j])              backward transfer (< 0: forgetting)
    FWT        = 1/(T-1) sum_{j>=1}   (R[j-1][j] - b[j])                 forward transfer (needs b)
    forgetting = 1/(T-1) sum_{j<T-1}  (max_{l<T-1} R[l][j] - R[T-1][j])  (Chaudhry et al. 2018, "RWalk", Eq. 9:
                 the best accuracy task j ever had before the final step, minus its final accuracy)

BWT, FWT and forgetting need T >= 2 and are None for a single task (FWT also without b).

Intervals across seeds (`seed_interval`): mean +- t_{0.975, n-1} * s / sqrt(n), Student's t over the per-seed values
(seeds are few, so not the normal 1.96). With ONE seed there is no spread to measure: the interval is then the Wilson
score interval over that seed's probes (the evaluate stage's interval, `lmsleep.grading.mean_ci95`) when the
per-probe outcomes are given, else None. `ci_method` in the result says which was used. A quantity with a range
(`bounds`: accuracies in [0, 1], differences of accuracies in [-1, 1]) has its t-interval clipped to that range, as
a symmetric interval around a mean near 0% would otherwise reach below it.

Paired differences (`paired_difference`): two methods run on the same data and seeds differ seed by seed, and the
t-interval of those per-seed differences is the test of "A beats B" that shares the seeds' noise (data order, the
night's own samples) between the two; two separate intervals that merely do not overlap is the stricter reading the
issues' targets use. Reports carry both; `comparison_pairs` names which methods a run compares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lmsleep.grading import mean_ci95

# t_{0.975, df} for df = 1..30 (two-sided 95%); beyond 30 a Cornish-Fisher expansion of the normal quantile is
# within 1e-4 of the exact value, so no scipy is needed.
T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788, 2.1604,
        2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555,
        2.0518, 2.0484, 2.0452, 2.0423)
Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


# ---------------------------------------------------------------- retention (sequential benchmarks)


def _check_square(R: Sequence[Sequence[float]]) -> int:
    T = len(R)
    if T == 0 or any(len(row) != T for row in R):
        raise ValueError(f"R must be a non-empty square matrix (T x T), got {[len(row) for row in R]} rows")
    return T


def average_accuracy(R: Sequence[Sequence[float]]) -> float:
    T = _check_square(R)
    return sum(R[T - 1]) / T


def backward_transfer(R: Sequence[Sequence[float]]) -> float | None:
    T = _check_square(R)
    if T < 2:
        return None
    return sum(R[T - 1][j] - R[j][j] for j in range(T - 1)) / (T - 1)


def forward_transfer(R: Sequence[Sequence[float]], baseline: Sequence[float] | None) -> float | None:
    T = _check_square(R)
    if T < 2 or baseline is None:
        return None
    if len(baseline) != T:
        raise ValueError(f"baseline has {len(baseline)} entries, R has {T} tasks")
    return sum(R[j - 1][j] - baseline[j] for j in range(1, T)) / (T - 1)


def forgetting(R: Sequence[Sequence[float]]) -> float | None:
    T = _check_square(R)
    if T < 2:
        return None
    return sum(max(R[l][j] for l in range(T - 1)) - R[T - 1][j] for j in range(T - 1)) / (T - 1)


def retention_metrics(R: Sequence[Sequence[float]], baseline: Sequence[float] | None = None) -> dict[str, Any]:
    """{"acc", "bwt", "fwt", "forgetting"} of one accuracy matrix (one seed, one method)."""
    return {"acc": average_accuracy(R), "bwt": backward_transfer(R), "fwt": forward_transfer(R, baseline),
            "forgetting": forgetting(R)}


# ---------------------------------------------------------------- intervals across seeds


UNIT = (0.0, 1.0)  # accuracies, F1
SIGNED_UNIT = (-1.0, 1.0)  # differences of accuracies: gains, BWT, FWT, forgetting


def seed_interval(values: Sequence[float | None], probe_outcomes: Sequence[bool] | None = None,
                  bounds: tuple[float, float] | None = None) -> dict[str, Any]:
    """{"mean", "ci95", "ci_method", "n_seeds", "per_seed"} of one quantity measured once per seed.

    None values (a metric undefined for that seed) are left out; if all are None the mean is None.
    `probe_outcomes`: the per-probe correct/incorrect of the single seed, for the Wilson fallback when n == 1.
    """
    kept = [float(v) for v in values if v is not None]
    out: dict[str, Any] = {"mean": None, "ci95": None, "ci_method": None, "n_seeds": len(kept),
                           "per_seed": list(values)}
    if not kept:
        return out
    n = len(kept)
    mean = sum(kept) / n
    out["mean"] = mean
    if n >= 2:
        s = math.sqrt(sum((v - mean) ** 2 for v in kept) / (n - 1))
        half = t_quantile_975(n - 1) * s / math.sqrt(n)
        low, high = mean - half, mean + half
        out["ci95"], out["ci_method"] = [low, high], f"t over {n} seeds"
        if bounds is not None and (low < bounds[0] or high > bounds[1]):
            out["ci95"] = [max(low, bounds[0]), min(high, bounds[1])]
            out["ci_method"] += f", clipped to [{bounds[0]:g}, {bounds[1]:g}]"
    elif probe_outcomes:
        _, low, high = mean_ci95([bool(x) for x in probe_outcomes], proportion=True)
        out["ci95"], out["ci_method"] = [low, high], f"Wilson over {len(probe_outcomes)} probes (1 seed)"
    return out


def beats_beyond_intervals(a: dict[str, Any], b: dict[str, Any]) -> bool | None:
    """True when a's 95% interval lies wholly above b's (a's low > b's high); None when either has no interval."""
    if not a.get("ci95") or not b.get("ci95"):
        return None
    return a["ci95"][0] > b["ci95"][1]


def paired_difference(a: Sequence[float | None], b: Sequence[float | None]) -> dict[str, Any]:
    """seed_interval of a[s] - b[s] over the seeds both have, plus "beyond_zero": "above" / "below" when the interval
    excludes 0, None when it does not (or there is no interval: fewer than 2 paired seeds)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need one per seed on both sides, got {len(a)} and {len(b)}")
    out = seed_interval([None if x is None or y is None else x - y for x, y in zip(a, b)], bounds=SIGNED_UNIT)
    ci = out["ci95"] if out["n_seeds"] >= 2 else None
    out["beyond_zero"] = None if not ci else "above" if ci[0] > 0 else "below" if ci[1] < 0 else None
    return out


# what the product's consolidator is compared with, seed by seed, wherever both ran
PRODUCT, BASELINES = "sleep_ks", ("sft", "sft_replay", "context_distill_offpolicy", "opsd", "seal_like")


def comparison_pairs(methods: Sequence[str]) -> list[tuple[str, str]]:
    """(method, reference) pairs among `methods`: sleep_ks against every baseline that ran; an ablation or variant
    ("X-part", "X+part") against X; another sleep_ks_* method (dreaming, the fast-level sender) against sleep_ks."""
    present, pairs = set(methods), []
    for name in methods:
        cut = min((i for i in (name.find("-"), name.find("+")) if i > 0), default=None)
        if cut is not None and name[:cut] in present:
            pairs.append((name, name[:cut]))
        elif name.startswith(PRODUCT + "_") and cut is None and PRODUCT in present:
            pairs.append((name, PRODUCT))
    if PRODUCT in present:
        pairs[:0] = [(PRODUCT, b) for b in BASELINES if b in present]
    return pairs


def gap_closed(method: float | None, before: float | None, ceiling: float | None) -> float | None:
    """(method - before) / (ceiling - before): the share of the in-context gap a consolidator closes.

    Computed on means (a ratio of per-seed values divides by noise); None when there is no gap to close."""
    if method is None or before is None or ceiling is None or ceiling - before <= 0:
        return None
    return (method - before) / (ceiling - before)
