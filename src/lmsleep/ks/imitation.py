"""Learning to Imitate (LTI, PAPER §4b): rewards for the student's completions of teacher dreams, REINFORCE, and L_KS.

A teacher sample d is cut at a random prefix; the student completes the prefix G times -> d_hat. Reward per sample:

    r     = gamma * r_sem(d_hat, d) + (1 - gamma) * r_abs(d_hat, d)                                    in [0, 1]
    r_abs = 1 - lev(d_hat, d) / max(|d_hat|, |d|)   if lev(d_hat, d) <= z0   else 0     (two empty strings: 1)
    r_sem = 1 if the frozen judge says "same meaning" else 0                               (lmsleep.ks.judge)

lev is the CHARACTER-level Levenshtein distance (unit insert/delete/substitute) on the decoded texts and z0 is in
characters: characters do not depend on the tokenizer, so rewards stay comparable across base models and nights.

Policy gradient (our default, the paper names no algorithm): REINFORCE with group-normalised advantages, no KL term.
For rewards r[g, i] of sample i of prefix g, and log pi(d_hat[g, i]) the student's summed log-probability of its own
completion tokens:

    A[g, i]        = (r[g, i] - mean_i r[g, :]) / (std_i r[g, :] + eps)     (population std; A = 0 if the group ties)
    reinforce_loss = -mean_{g,i} A[g, i] * log pi(d_hat[g, i])              (A detached: a constant weight)

Signs. The paper MAXIMISES  L_KS = (1 - alpha) * E[r] - alpha * D(T||S).  We return the LOSS to MINIMISE:

    ks_loss = alpha * distill_loss + (1 - alpha) * reinforce_loss

where distill_loss = D (a divergence, >= 0, lower is better) and reinforce_loss is the surrogate whose gradient is
an estimate of -grad E[r] (up to the positive per-group 1/std scale). So minimising ks_loss ascends L_KS.

Try it:  python -c "from lmsleep.ks.imitation import absolute_reward; print(absolute_reward('kitten', 'sitting', z0=5))"
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

if TYPE_CHECKING:
    from lmsleep.ks.judge import SemanticJudge

Tokens = TypeVar("Tokens", bound=Sequence)

# ---------------------------------------------------------------------------------------------------------------------
# Rewards
# ---------------------------------------------------------------------------------------------------------------------


def levenshtein(a: Sequence, b: Sequence) -> int:
    """Edit distance (unit-cost insert, delete, substitute) between two strings (per character) or two sequences.

    One numpy pass per element of the shorter input: a DP row's insertion chain row[j] = min(cand[j], row[j-1] + 1)
    equals j + cummin_k(cand[k] - k), so the row is vectorised. A 500 x 500 character pair takes a few ms, which
    keeps rewarding a few hundred completions per step cheap without a compiled dependency.
    """
    if len(a) < len(b):
        a, b = b, a  # iterate over the shorter one, vectorise over the longer
    if len(b) == 0:
        return len(a)
    a_codes, b_codes = _as_codes(a, b)
    columns = np.arange(len(a_codes) + 1)
    previous = columns.copy()
    for i, symbol in enumerate(b_codes, start=1):
        candidates = np.empty_like(previous)
        candidates[0] = i
        candidates[1:] = np.minimum(previous[1:] + 1, previous[:-1] + (a_codes != symbol))
        previous = columns + np.minimum.accumulate(candidates - columns)
    return int(previous[-1])


def _as_codes(a: Sequence, b: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as integer arrays that are equal exactly where the elements are equal."""
    if isinstance(a, str) and isinstance(b, str):
        return np.array([ord(ch) for ch in a]), np.array([ord(ch) for ch in b])
    vocabulary: dict = {}  # shared by both inputs, so equal elements get equal codes

    def to_codes(sequence: Sequence) -> np.ndarray:
        return np.array([vocabulary.setdefault(element, len(vocabulary)) for element in sequence])

    return to_codes(a), to_codes(b)


def absolute_reward(prediction: str, reference: str, z0: float | None) -> float:
    """r_abs = 1 - lev / max(len) when lev <= z0 (characters), else 0; z0=None disables the gate. Both empty: 1."""
    longest = max(len(prediction), len(reference))
    if longest == 0:
        return 1.0  # two empty strings are identical; 1 - 0/0 is undefined
    distance = levenshtein(prediction, reference)
    if z0 is not None and distance > z0:
        return 0.0  # too far to count as an imitation at all: no partial credit for unrelated text
    return 1.0 - distance / longest


def imitation_reward(
    predictions: Sequence[str],
    references: Sequence[str],
    gamma: float,
    z0: float | None,
    judge: SemanticJudge | None = None,
    sem_threshold: float | None = None,
) -> torch.Tensor:
    """r = gamma * r_sem + (1 - gamma) * r_abs per pair, float32 `[n]` (reshape to [groups, samples] for advantages).

    judge is required when gamma > 0; sem_threshold None uses the judge's own threshold.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions against {len(references)} references")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    absolute = torch.tensor([absolute_reward(p, r, z0) for p, r in zip(predictions, references)], dtype=torch.float32)
    if gamma == 0.0:
        return absolute  # the judge is not even needed: skip its forward pass
    if judge is None:
        raise ValueError("gamma > 0 needs a judge for r_sem (lmsleep.ks.judge.SemanticJudge)")
    semantic = torch.tensor(judge.same_meaning(predictions, references, sem_threshold), dtype=torch.float32)
    return gamma * semantic + (1.0 - gamma) * absolute


def random_prefix_split(
    token_ids: Tokens, min_frac: float, max_frac: float, rng: random.Random
) -> tuple[Tokens, Tokens]:
    """Cut a teacher sample at round(f * n), f ~ U[min_frac, max_frac], kept in [1, n-1]: (prefix, continuation).

    Both parts are non-empty: an empty prefix gives the student no cue, an empty target gives it nothing to imitate.
    Works on anything sliceable (lists, 1-D tensors, strings).
    """
    if not 0.0 <= min_frac <= max_frac <= 1.0:
        raise ValueError(f"need 0 <= min_frac <= max_frac <= 1, got {min_frac}, {max_frac}")
    length = len(token_ids)
    if length < 2:
        raise ValueError(f"a sample needs at least 2 tokens to split, got {length}")
    cut = min(max(round(rng.uniform(min_frac, max_frac) * length), 1), length - 1)
    return token_ids[:cut], token_ids[cut:]


# ---------------------------------------------------------------------------------------------------------------------
# REINFORCE
# ---------------------------------------------------------------------------------------------------------------------


def completion_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log pi(completion) per sequence `[batch]`: sum over masked positions of log softmax(logits)[token].

    logits `[batch, seq, vocab]` must already be aligned with token_ids `[batch, seq]` (logits[:, t] predicts
    token_ids[:, t], i.e. the caller shifted by one); mask marks the completion tokens the student sampled.
    """
    logprobs = torch.log_softmax(logits.float(), dim=-1).gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)
    return (logprobs * mask.to(logprobs.dtype)).sum(-1)


def group_normalised_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(r - group mean) / (group std + eps) for rewards `[groups, samples]`; exactly 0 for a group whose rewards tie."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [groups, samples], got shape {tuple(rewards.shape)}")
    rewards = rewards.detach().float()
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    # population std (not Bessel's): defined for one sample per group, where the advantage is then 0
    advantages = centred / (rewards.std(dim=1, unbiased=False, keepdim=True) + eps)
    # a tied group carries no signal; rounding in the mean would otherwise leave +-1e-11 noise that still pushes logp
    tied = rewards.amax(dim=1, keepdim=True) == rewards.amin(dim=1, keepdim=True)
    return torch.where(tied, torch.zeros_like(advantages), advantages)


def reinforce_loss(sequence_logprobs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """-mean(A * log pi) over all samples; A is detached. No KL term (PAPER §4b default)."""
    if sequence_logprobs.shape != advantages.shape:
        raise ValueError(f"log-probs {tuple(sequence_logprobs.shape)} != advantages {tuple(advantages.shape)}")
    return -(advantages.detach().to(sequence_logprobs.dtype) * sequence_logprobs).mean()


# ---------------------------------------------------------------------------------------------------------------------
# L_KS
# ---------------------------------------------------------------------------------------------------------------------


def combined_ks_objective(
    reinforce_term: torch.Tensor | None, distill_term: torch.Tensor | None, alpha: float
) -> torch.Tensor:
    """The KS LOSS to minimise: alpha * distill_term + (1 - alpha) * reinforce_term (= -L_KS, module docstring).

    reinforce_term is `reinforce_loss(...)` (already sign-flipped: lower is more reward), distill_term the divergence
    D from `generalized_distillation_loss` (lower is closer to the teacher). A term whose weight is 0 may be None and
    is then not touched: alpha = 1 is exactly distillation, alpha = 0 exactly RL (and a NaN in the unused term stays
    out of the loss).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if alpha == 1.0:
        return _required(distill_term, "distill_term", alpha)
    if alpha == 0.0:
        return _required(reinforce_term, "reinforce_term", alpha)
    return alpha * _required(distill_term, "distill_term", alpha) + (1.0 - alpha) * _required(
        reinforce_term, "reinforce_term", alpha
    )


def _required(term: torch.Tensor | None, name: str, alpha: float) -> torch.Tensor:
    if term is None:
        raise ValueError(f"{name} is needed when alpha = {alpha}")
    return term
