"""Selecting dreams (PAPER §5 step 2): a gradient importance per dream, then top-k plus b random per memory.

    score_dreams(dm, dreams, tasks, cfg, rng)     # d.score for every well-formed dream
    kept = select(dreams, cfg, rng)               # d.kept = 'top-k' | 'random'; the trial order, capped

Importance (our default for the paper's GREATS / G-DIG citation): the inner product of the dream's SFT gradient
(mean NLL of its completion after its student prompt, no memory) with the gradient of its memory's tau loss (mean
NLL of the tau answers, no memory), both taken on the trainable parameters only: tonight's expert (A, B, gate), the
tensors rehearsal will train. A positive score says one small step on the dream lowers tau's loss (first order).
Every gradient is a fresh backward through the frozen model with no adapter live; no optimizer step is taken.
`grad_selection: false` (the ablation) replaces the score by a uniform random number: top-k becomes random-k.
"""

from __future__ import annotations

import random

import torch

from lmsleep.dream.ledger import Dream
from lmsleep.dream.model import completion_nll
from lmsleep.dream.task import TaskItem, tau_loss


def _gradient(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def score_dreams(dm, dreams: list[Dream], tasks: dict[str, list[TaskItem]], cfg, rng: random.Random) -> None:
    """Fill d.score for every well-formed dream (malformed ones stay None and are never kept)."""
    candidates = [d for d in dreams if d.malformed is None]
    if not cfg.grad_selection:
        for d in candidates:
            d.score = rng.random()
        return
    params = dm.cms.trainable_expert(dm.level, dm.index)
    try:
        with dm.use(None), torch.enable_grad():
            tau_grads = {mid: _gradient(tau_loss(dm, tasks[mid]), params)
                         for mid in sorted({d.memory_id for d in candidates})}
            for d in candidates:
                dream_loss = completion_nll(dm.cms, [(d.student_ids, d.completion_ids)], dm.pad_id())[0]
                d.score = float(sum((g * t).sum() for g, t in zip(_gradient(dream_loss, params),
                                                                   tau_grads[d.memory_id])))
    finally:
        dm.cms.freeze_experts()


def select(dreams: list[Dream], cfg, rng: random.Random) -> list[Dream]:
    """Per memory: the `top_k` highest scores, plus `random_b` drawn uniformly from the rest (exactly k + b when the
    memory has that many scored dreams). Returns the kept dreams in trial order (every memory's best first, then
    round-robin), cut at `max_trials`; the ones past the cap stay kept but are never tested."""
    by_memory: dict[str, list[Dream]] = {}
    for d in dreams:
        if d.score is not None:
            by_memory.setdefault(d.memory_id, []).append(d)
    queues = []
    for mid in sorted(by_memory):
        ranked = sorted(by_memory[mid], key=lambda d: d.score, reverse=True)
        top, rest = ranked[: cfg.top_k], ranked[cfg.top_k :]
        extra = rng.sample(rest, min(cfg.random_b, len(rest)))
        for d in top:
            d.kept = "top-k"
        for d in extra:
            d.kept = "random"
        queues.append(top + extra)
    order = [q[i] for i in range(max((len(q) for q in queues), default=0)) for q in queues if i < len(q)]
    return order[: cfg.max_trials]
