"""The drift guard: after a KS night, shrink the new expert until a general text's perplexity rises by at most a budget.

    guard = keep_within_drift(cms, tokenizer, read_drift_text(""), budget=0.08)   # seed.ks_drift_budget
    guard["scale"]     # what every active expert's B was multiplied by (1.0: the night was already inside)

Why: the promotion gate refuses a night whose reference perplexity rose past promote.max_perplexity_increase, and a
refused night keeps nothing it learned. Scaling the expert's output down (B x s) lowers the perplexity rise much
faster than recall: on the demo night at ks_lr 3e-3, s = 0.7 kept 9 and 7 of 24 probes (10 and 8 at s = 1) while
the reference perplexity rise fell from +3.7% / +10.2% to -0.6% / +1.1% (docs/results.md). The expert stays a plain
linear delta (B A alpha/r), so the adapter export and the merged checkpoint remain exact.

The guard reads its own bundled text (src/lmsleep/ks/drift_text.txt), never the evaluate stage's reference text: a
night tuned on the gate's own measure would make the gate meaningless (the seed stage refuses that file).

Search: the rise r(s) = ppl(s) / ppl(0) - 1 grows with s near 0 (the expert is a small perturbation there), so the
largest s in [0, 1] with r(s) <= budget is found by bisection; every s returned was measured inside the budget.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from lmsleep.generation import perplexity

BUNDLED_DRIFT_TEXT = Path(__file__).with_name("drift_text.txt")
DRIFT_TOKENS = 2048  # the bundled text is ~1,500 SmolLM2 tokens: all of it (the reference check reads up to 1,024)


def read_drift_text(path: str | Path) -> str:
    """The guard's general text ('' = the bundled one); '#' lines are comments (the bundled file's header)."""
    text = Path(path or BUNDLED_DRIFT_TEXT).read_text(encoding="utf-8")
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#")).strip()
    if not body:
        raise ValueError(f"seed.ks_drift_text {path or BUNDLED_DRIFT_TEXT}: no text to measure perplexity on")
    return body


def _active(cms) -> list[tuple[str, list[int]]]:
    return [(name, list(level.active)) for name, level in cms.levels.items() if level.active]


def _without_experts(cms) -> ExitStack:
    """A context in which every active expert is masked: the model as it was before the night."""
    stack = ExitStack()
    for name, indices in _active(cms):
        stack.enter_context(cms.experts_off(name, indices))
    return stack


@torch.no_grad()
def _scale_b(cms, factor: float, originals: dict[int, torch.Tensor]) -> None:
    """Set every active expert's B to factor x its trained value (kept in `originals`, by tensor id)."""
    for name, indices in _active(cms):
        for pool in cms.levels[name].pools.values():
            for i in indices:
                b = pool.B[i]
                original = originals.setdefault(id(b), b.detach().clone())
                b.copy_(original * factor)


def keep_within_drift(cms, tokenizer, text: str, budget: float, max_tokens: int = DRIFT_TOKENS,
                      bisections: int = 6) -> dict[str, Any]:
    """Scale the active experts of `cms` so that `text`'s perplexity rises by at most `budget` (a fraction) over the
    same model without them. Returns what was measured: perplexity before, at full strength and as left, the scale,
    and how many perplexity passes it took (each ~max_tokens tokens forward)."""
    if budget <= 0:
        raise ValueError(f"the drift budget must be > 0, got {budget}")
    if not _active(cms):
        raise ValueError("the drift guard needs the night's expert active: no CMS level has an active expert")
    started = time.perf_counter()
    model = cms.base
    with _without_experts(cms):
        before = perplexity(model, tokenizer, text, max_tokens)
    full = perplexity(model, tokenizer, text, max_tokens)
    passes, scale, left = 2, 1.0, full
    if full / before - 1.0 > budget:
        originals: dict[int, torch.Tensor] = {}
        low, low_ppl, high = 0.0, before, 1.0
        for _ in range(bisections):
            mid = (low + high) / 2
            _scale_b(cms, mid, originals)
            measured = perplexity(model, tokenizer, text, max_tokens)
            passes += 1
            if measured / before - 1.0 <= budget:
                low, low_ppl = mid, measured
            else:
                high = mid
        _scale_b(cms, low, originals)
        scale, left = low, low_ppl
    return {"budget": budget, "scale": scale, "perplexity_before": round(before, 4),
            "perplexity_full": round(full, 4), "perplexity_left": round(left, 4),
            "rise_full": round(full / before - 1.0, 4), "rise_left": round(left / before - 1.0, 4),
            "perplexity_passes": passes, "tokens": max_tokens, "seconds": round(time.perf_counter() - started, 1)}
