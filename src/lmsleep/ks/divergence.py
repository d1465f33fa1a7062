"""Token-level divergences between teacher and student next-token distributions (PAPER §4a, GKD-style).

Inputs are LOGITS `[batch, seq, vocab]` of teacher T and student S at the same positions (the caller aligns them:
position t holds the distribution of token t+1), a completion mask `[batch, seq]` (1 where that distribution belongs
to the completion y, 0 on prompt and padding), and a temperature tau > 0. With t = softmax(teacher / tau) and
s = softmax(student / tau), per position:

    forward_kl       KL(T||S) = sum_v t_v (log t_v - log s_v)                      (mode-covering)
    reverse_kl       KL(S||T) = sum_v s_v (log s_v - log t_v)                      (mode-seeking)
    generalized_jsd  JSD_beta(T||S) = beta KL(T||M) + (1-beta) KL(S||M),  M = beta T + (1-beta) S

beta convention (the GKD paper's Eq. 1 with P = teacher, and TRL's `GKDTrainer.generalized_jsd_loss`): beta weights
the TEACHER, both in the mixture and in the outer sum. 0 <= JSD_beta <= H(beta) <= ln 2, symmetric in (T, S) at
beta = 0.5. The formula itself goes to 0 at both ends (M collapses onto S or T), but its scaled limits do not:

    JSD_beta / beta       -> KL(T||S)  as beta -> 0
    JSD_beta / (1 - beta) -> KL(S||T)  as beta -> 1

so, as TRL does, `generalized_jsd(beta=0)` RETURNS forward_kl and `generalized_jsd(beta=1)` RETURNS reverse_kl
(the scaled limits), while any beta strictly inside (0, 1) uses the formula. Expect the jump at the ends.

Temperature divides both logits and is not compensated by tau^2 (as in TRL's GKD); `reduce_tokens` gives the mean over
the masked (completion) tokens of the whole batch: sum_{b,t} mask * d / sum_{b,t} mask, i.e. "summed over completion
tokens, averaged over tokens" (PAPER §4a), so a long completion weighs more than a short one, token for token.

Teacher top-k (for the disk cache): `teacher_topk_logprobs` keeps the teacher's k largest log-probabilities (of the
full, temperature-scaled softmax) and their token ids. A divergence given a `TeacherTopK` instead of teacher logits
compares the two distributions on a coarser support:
    tail="bucket" (default): k+1 outcomes, the k kept tokens plus one bucket holding the rest of the vocabulary
        (teacher tail = 1 - sum of kept probabilities, student tail = 1 - the student's mass on the same ids). By the
        data-processing inequality this is a lower bound on the full divergence, exact when the tail is empty (k = V).
    tail="renormalise": k outcomes, both distributions restricted to the kept ids and renormalised.
Gradients flow only to the student: the teacher's logits (or cached log-probs) are detached.

Try it:
    python -c "import torch; from lmsleep.ks.divergence import forward_kl as f; print(f(*torch.randn(2, 1, 3, 5)))"
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
TailMode = Literal["bucket", "renormalise"]


@dataclass(frozen=True)
class TeacherTopK:
    """The teacher's k most likely next tokens per position: full-softmax log-probs and their vocabulary ids."""

    logprobs: torch.Tensor  # [batch, seq, k], log softmax(teacher_logits / temperature) at `indices`
    indices: torch.Tensor  # [batch, seq, k], int64 token ids
    temperature: float  # the temperature the log-probs were taken at; the student must be scaled the same way
    tail: TailMode = "bucket"


def teacher_topk_logprobs(
    teacher_logits: torch.Tensor, k: int, temperature: float = 1.0, tail: TailMode = "bucket"
) -> TeacherTopK:
    """Keep the teacher's top-k log-probabilities (and ids) per position, for a compact cache."""
    _check_temperature(temperature)
    if tail not in ("bucket", "renormalise"):
        raise ValueError(f"tail must be 'bucket' or 'renormalise', got {tail!r}")
    vocab = teacher_logits.shape[-1]
    if not 1 <= k <= vocab:
        raise ValueError(f"k must be in [1, vocab={vocab}], got {k}")
    logprobs = torch.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    values, indices = logprobs.topk(k, dim=-1)
    return TeacherTopK(logprobs=values, indices=indices, temperature=float(temperature), tail=tail)


# ---------------------------------------------------------------------------------------------------------------------
# Per-token divergences
# ---------------------------------------------------------------------------------------------------------------------


def forward_kl(
    teacher_logits: torch.Tensor | TeacherTopK,
    student_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """KL(T||S) per position, `[batch, seq]`, zero where mask is 0."""
    teacher_logprobs, student_logprobs = _aligned_logprobs(teacher_logits, student_logits, temperature)
    return _masked(_kl(teacher_logprobs, student_logprobs), mask)


def reverse_kl(
    teacher_logits: torch.Tensor | TeacherTopK,
    student_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """KL(S||T) per position, `[batch, seq]`, zero where mask is 0."""
    teacher_logprobs, student_logprobs = _aligned_logprobs(teacher_logits, student_logits, temperature)
    return _masked(_kl(student_logprobs, teacher_logprobs), mask)


def generalized_jsd(
    teacher_logits: torch.Tensor | TeacherTopK,
    student_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """JSD_beta(T||S) per position, `[batch, seq]`; beta = 0 gives forward KL, beta = 1 reverse KL (see the module)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    teacher_logprobs, student_logprobs = _aligned_logprobs(teacher_logits, student_logits, temperature)
    if beta == 0.0:  # the scaled limit JSD_beta / beta; the raw formula would be identically 0 here
        per_token = _kl(teacher_logprobs, student_logprobs)
    elif beta == 1.0:  # the scaled limit JSD_beta / (1 - beta)
        per_token = _kl(student_logprobs, teacher_logprobs)
    else:
        # log M = logsumexp(log beta + log t, log(1-beta) + log s): never forms the probabilities themselves
        mixture_logprobs = torch.logaddexp(teacher_logprobs + math.log(beta), student_logprobs + math.log1p(-beta))
        per_token = beta * _kl(teacher_logprobs, mixture_logprobs) + (1.0 - beta) * _kl(
            student_logprobs, mixture_logprobs
        )
    return _masked(per_token, mask)


def reduce_tokens(per_token: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the completion tokens of the whole batch: sum(mask * d) / sum(mask) (0 when nothing is masked in)."""
    if mask is None:
        return per_token.mean()
    weights = mask.to(per_token.dtype)
    # clamp: a batch with no completion token gives 0 rather than 0/0 = NaN
    return (per_token * weights).sum() / weights.sum().clamp_min(1.0)


def generalized_distillation_loss(
    teacher_logits: torch.Tensor | TeacherTopK,
    student_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    divergence: str = "jsd",
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Scalar distillation loss D to minimise: the chosen divergence, reduced with `reduce_tokens`.

    divergence: "forward_kl" | "reverse_kl" | "jsd" (beta is used only by "jsd").
    """
    if divergence == "forward_kl":
        per_token = forward_kl(teacher_logits, student_logits, mask, temperature)
    elif divergence == "reverse_kl":
        per_token = reverse_kl(teacher_logits, student_logits, mask, temperature)
    elif divergence == "jsd":
        per_token = generalized_jsd(teacher_logits, student_logits, mask, beta, temperature)
    else:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    return reduce_tokens(per_token, mask)


def with_hard_labels(distill: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor,
                     weight: float) -> torch.Tensor:
    """(1 - weight) * distill + weight * the student's mean cross-entropy on `labels` (the teacher's own y, token for
    token: sequence-level distillation). Forward KL matches the teacher's whole distribution, so where a 135M teacher
    reading the memory is unsure of a name, so is the student, and greedy decoding picks another; the hard labels
    pull the student to the teacher's greedy answer. student_logits [tokens, vocab], labels [tokens]."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"hard-label weight must be in [0, 1], got {weight}")
    if weight == 0.0:
        return distill
    hard = torch.nn.functional.cross_entropy(student_logits.float(), labels.to(student_logits.device))
    return (1.0 - weight) * distill + weight * hard


# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _kl(p_logprobs: torch.Tensor, q_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(P||Q) over the last dim from log-probabilities; outcomes with p = 0 contribute 0 (0 log 0 = 0)."""
    terms = p_logprobs.exp() * (p_logprobs - q_logprobs)
    # where(), not a multiplication by a mask: -inf - (-inf) would otherwise turn a zero-probability outcome into NaN
    return torch.where(torch.isneginf(p_logprobs), torch.zeros_like(terms), terms).sum(-1)


def _masked(per_token: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per_token
    if mask.shape != per_token.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != [batch, seq] {tuple(per_token.shape)}")
    return per_token * mask.to(per_token.dtype)


def _log1mexp(logp: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(logp)) for logp <= 0, accurate at both ends (Maechler 2012)."""
    # clamp below 0: a kept mass that rounds to >= 1 leaves a tail of about one ulp, not log(0) = -inf
    # (an infinite log would make NaN gradients even where the tail's weight is 0)
    logp = logp.clamp(max=-torch.finfo(logp.dtype).eps)
    return torch.where(logp > -math.log(2.0), torch.log(-torch.expm1(logp)), torch.log1p(-torch.exp(logp)))


def _aligned_logprobs(
    teacher: torch.Tensor | TeacherTopK, student_logits: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student log-probabilities on one common support (last dim), teacher detached."""
    _check_temperature(temperature)
    # float32 at least: bf16 log-softmax over a 150k vocabulary is too coarse for a divergence that is often ~1e-3
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    student_logprobs = torch.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    if isinstance(teacher, torch.Tensor):
        if teacher.shape != student_logits.shape:
            raise ValueError(f"teacher logits {tuple(teacher.shape)} != student logits {tuple(student_logits.shape)}")
        # detach: teacher and student are one network in two states, a gradient through the teacher would train it
        teacher_logprobs = torch.log_softmax(teacher.detach().to(dtype) / temperature, dim=-1)
        return teacher_logprobs, student_logprobs

    if not math.isclose(teacher.temperature, temperature):
        raise ValueError(f"teacher top-k taken at temperature {teacher.temperature}, student scaled by {temperature}")
    teacher_kept = teacher.logprobs.detach().to(dtype)
    student_kept = student_logprobs.gather(-1, teacher.indices)
    if teacher.tail == "renormalise":
        return (
            teacher_kept - teacher_kept.logsumexp(-1, keepdim=True),
            student_kept - student_kept.logsumexp(-1, keepdim=True),
        )
    teacher_tail = _log1mexp(teacher_kept.logsumexp(-1, keepdim=True))
    student_tail = _log1mexp(student_kept.logsumexp(-1, keepdim=True))
    return torch.cat([teacher_kept, teacher_tail], -1), torch.cat([student_kept, student_tail], -1)
