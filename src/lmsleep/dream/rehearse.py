"""Rehearsal (PAPER §5 step 5, our choice): the accepted dreams train tonight's expert, through the KS machinery.

    losses, audit = rehearse(cms, tokenizer, dreams, memories, seed_cfg, dream_cfg, level, index)

Each reward-1 dream becomes a Knowledge Seeding `Sample` (lmsleep.ks.samples): student prompt = the dream's
question or "Continue: ..." WITHOUT the memory, teacher prompt = the same WITH the memory in context, y = the dream's
completion. The teacher is the same network with tonight's expert masked off (as in the seed stage) and scores y
once (`lmsleep.ks.teacher.score`, top-k as `seed.ks_teacher_topk`); then `rehearsal_steps` GKD steps
(`generalized_distillation_loss`, `seed.ks_divergence` / `ks_beta`) on batches of `seed.batch_size`, each prompt's
turn on-policy with probability `seed.ks_lambda` (y sampled from the student, scored once by the teacher), exactly
the distillation step of `lmsleep.ks.consolidate`. Only tonight's expert is in the optimizer, so the rehearsed
expert is exported as tonight's adapter in the same format the seed stage writes.

`dream.rehearsal_night_share` mixes tonight's own KS prompts into every rehearsal batch (`night_samples`, rebuilt
from the seed stage's train_texts rows; the teacher writes their y again, greedy as the night did). The idea: a night
rewards a handful of dreams (2 to 10 of 80 on squad20), and 8 steps on those alone once pulled tonight's expert away
from what it had learned. Measured on squad20 it did not help (docs/results.md), so its default is 0.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from lmsleep.dream.ledger import Dream
from lmsleep.ks import teacher as teacher_side
from lmsleep.ks.consolidate import distillation_loss
from lmsleep.ks.samples import Sample, draw_batch, encode, messages

NIGHT_KINDS = ("question", "continuation", "cloze")  # the seed night's prompts written from a memory
from lmsleep.memory import training_text
from lmsleep.prompts import question_messages


def dream_samples(tokenizer, dreams: list[Dream], memories: list[dict[str, Any]]) -> list[Sample]:
    """KS samples of dreams: student without the memory, teacher with it, y = the dream's completion."""
    text = {str(m["id"]): training_text(m) for m in memories}
    out = []
    for d in dreams:
        memory = text[d.memory_id]
        chat = question_messages(d.instruction, memory) if d.as_question else messages(d.instruction, memory)
        out.append(Sample(d.memory_id, f"dream:{d.kind}", list(d.student_ids), encode(tokenizer, chat),
                          d.instruction, list(d.completion_ids), source=f"dream:{d.id}"))
    return out


def night_samples(tokenizer, rows: list[dict[str, Any]], memories: list[dict[str, Any]]) -> list[Sample]:
    """Tonight's KS prompts from the seed night's train_texts rows (`Sample.audit` rows): the memory's questions,
    continuations and clozes, student without the memory and teacher with it, y left for the teacher to write.
    Replay, anchor and on-policy rows, and rows of memories not given, are left out."""
    text = {str(m["id"]): training_text(m) for m in memories}
    out = []
    for r in rows:
        mid = str(r.get("memory_id") or "")
        if r.get("source") != "memory" or r.get("kind") not in NIGHT_KINDS or mid not in text or not r.get("prompt"):
            continue
        if r["kind"] == "question":
            student, teacher = question_messages(r["prompt"]), question_messages(r["prompt"], text[mid])
        else:
            student, teacher = messages(r["prompt"], None), messages(r["prompt"], text[mid])
        out.append(Sample(mid, r["kind"], encode(tokenizer, student), encode(tokenizer, teacher), r["prompt"], []))
    return out


def night_rows_per_batch(batch_size: int, share: float) -> int:
    """Rows of a rehearsal batch taken from tonight's samples: round(share x batch), at least 1 when share > 0 and
    at most batch - 1 (a batch of 1 takes none: the dreams come first)."""
    if share <= 0 or batch_size < 2:
        return 0
    return min(batch_size - 1, max(1, round(batch_size * share)))


def distill_samples(cms, tokenizer, samples: list[Sample], seed_cfg, level: str, index: int, steps: int,
                    lr: float, seed: int = 0, night: list[Sample] | None = None,
                    night_share: float = 0.0) -> tuple[list[float], list[Sample], list[Sample]]:
    """GKD of expert `index` of `level` on prebuilt samples (teacher = that expert off). Returns the loss per step,
    the samples that were in some batch, and the on-policy samples drawn (for the audit). The same step as
    lmsleep.ks.consolidate's distillation (`distillation_loss`).

    `night`: tonight's own samples (`night_samples`); each batch then takes `night_rows_per_batch` rows of them and
    fills the rest from `samples`. Only as many night samples as the steps can draw are picked (seeded) and written
    by the teacher."""
    if not samples or steps == 0:
        return [], [], []
    pad = tokenizer.pad_token_id
    params = cms.trainable_expert(level, index)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = random.Random(f"dream-rehearsal-{seed}")
    torch.manual_seed(seed)
    n_night = night_rows_per_batch(seed_cfg.batch_size, night_share) if night else 0
    tonight = random.Random(f"dream-rehearsal-night-{seed}").sample(night, min(len(night), steps * n_night)) \
        if n_night else []
    with cms.experts_off(level, [index]):
        teacher_side.write_completions(cms, tokenizer, tonight, seed_cfg)  # greedy: the night's own y again
        teacher_side.score(cms, samples + tonight, pad, seed_cfg.batch_size, seed_cfg.ks_teacher_topk)
    losses, order, night_order, drawn, seen = [], [], [], [], {}
    try:
        for _ in range(steps):
            batch = draw_batch(samples, order, seed_cfg.batch_size - n_night, rng)
            batch += draw_batch(tonight, night_order, n_night, rng) if n_night else []
            seen.update((id(s), s) for s in batch)
            loss, fresh, _ = distillation_loss(cms, tokenizer, batch, seed_cfg, level, index, rng)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            drawn += fresh
    finally:
        cms.freeze_experts()
    return losses, list(seen.values()), drawn


def rehearse(cms, tokenizer, dreams: list[Dream], memories: list[dict[str, Any]], seed_cfg, dream_cfg, level: str,
             index: int, night_rows: list[dict[str, Any]] | None = None) -> tuple[list[float], list[dict[str, str]]]:
    """Train tonight's expert on the reward-1 dreams (those that reached a batch are marked used), mixed with
    tonight's own prompts (`night_rows`: the seed night's train_texts rows) when dream.rehearsal_night_share > 0.
    Returns (losses, audit rows of every sample trained on, on-policy ones included)."""
    accepted = [d for d in dreams if d.reward == 1]
    samples = dream_samples(tokenizer, accepted, memories)
    night = night_samples(tokenizer, night_rows or [], memories) if dream_cfg.rehearsal_night_share > 0 else []
    losses, seen, drawn = distill_samples(cms, tokenizer, samples, seed_cfg, level, index, dream_cfg.rehearsal_steps,
                                          dream_cfg.rehearsal_lr, dream_cfg.seed, night,
                                          dream_cfg.rehearsal_night_share)
    used = {id(s) for s in seen}
    for d, s in zip(accepted, samples):
        d.used = id(s) in used
    return losses, [{"use": "rehearsal", **s.audit(tokenizer)} for s in seen + drawn]
