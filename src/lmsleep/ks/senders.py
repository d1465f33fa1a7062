"""A fast MLP level as the sender (PAPER §3, the general multi-level case): awake test-time training, then sleep.

    upd = OnlineFastLevelUpdater(cms, "fast", chunk_tokens=1024, lr=1e-3)
    upd.feed(token_ids)                      # every C tokens: one LM-loss step into the fast level's current expert
    stats = consolidate_fast_level(cms, "fast", "slow", prompts, steps=200, lr=1e-3, updater=upd)

Awake (`OnlineFastLevelUpdater`): tokens arrive in any pieces; they are buffered and every `chunk_tokens` (C) tokens
one AdamW step of the next-token loss on that chunk goes into the fast level's CURRENT expert (the one the updater
trains, else the newest active one, else a newly activated one). `trainable_expert` makes it the only tensor with a
gradient, so the base and every other level stay bit-identical. Each chunk is preceded by the last token of the
previous chunk, so all C tokens are predicted. The optimizer state starts afresh whenever the expert changes.

Sleep (`consolidate_fast_level`), Compute -> Consolidate -> Update:
  Compute      the sender's knowledge is its active experts. Its pending update is the gradient of the tokens buffered
               since the last step (< C of them): `updater.pending_gradient()` computes it and it is held, unapplied.
  Consolidate  teacher = the model as it is (sender experts on), logits computed once per prompt batch under
               `torch.no_grad` BEFORE the new expert exists; student = the same network with the sender's experts
               masked off and ONE new expert activated in the receiver (B = 0: function preserving). Only that expert
               is trained, with `generalized_distillation_loss` between teacher and student next-token distributions,
               teacher-forced on the prompt tokens (no sampling: cheap and deterministic). No copy of any weights.
  Update       the sender is reset (`reset_level`: pruned); the new receiver expert stays active (and is settled for
               the top-k router). The pending gradient belongs to experts that have just been pruned, so applying it
               is moot and it is DISCARDED; its tokens are not lost: they stay in the updater's buffer and the next
               fast expert learns them at its next step (`updater.new_expert()` drops the old optimizer state).
If anything fails during Consolidate, the new receiver expert is removed and the sender is restored unchanged.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch
from torch.nn import functional as F

from lmsleep.ks.divergence import generalized_distillation_loss, teacher_topk_logprobs
from lmsleep.ks.rollout import pad_rows


def _device(cms) -> torch.device:
    return next(cms.base.parameters()).device


def _lm_loss(cms, ids: list[int]) -> torch.Tensor:
    """Mean next-token cross entropy of one token sequence (every token after the first is predicted)."""
    x = torch.tensor([ids], dtype=torch.long, device=_device(cms))
    logits = cms(input_ids=x).logits[0, :-1]
    return F.cross_entropy(logits.float(), x[0, 1:])


class OnlineFastLevelUpdater:
    """Test-time training of one fast CMS level while awake: one gradient step every `chunk_tokens` tokens."""

    def __init__(self, cms, level: str, chunk_tokens: int, lr: float = 1e-3, rank: int | None = None,
                 generator: torch.Generator | None = None):
        spec = cms.level(level).spec
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
        if rank is not None and rank != spec.rank:  # the pool is pre-allocated: its rank is fixed by the LevelSpec
            raise ValueError(f"level {level!r} has rank {spec.rank}, updater asked for {rank}")
        self.cms, self.level, self.chunk_tokens, self.lr = cms, level, int(chunk_tokens), float(lr)
        self.generator = generator
        self.buffer: list[int] = []  # tokens fed since the last step (the pending chunk, < C of them)
        self.last_token: int | None = None  # context carried into the next chunk
        self.steps = 0
        self.tokens_seen = 0
        self.losses: list[float] = []
        self.step_at_token: list[int] = []  # tokens_seen at each step (fires every C tokens)
        self._expert: int | None = None
        self._optimizer: torch.optim.Optimizer | None = None

    @property
    def expert(self) -> int | None:
        """The expert the updater trains (None until the first step, or after the level was reset)."""
        return self._expert if self._expert in self.cms.active_experts(self.level) else None

    def _current_expert(self) -> tuple[int, list[torch.nn.Parameter]]:
        index = self.expert
        if index is None:
            active = self.cms.active_experts(self.level)
            index = active[-1] if active else self.cms.activate_expert(self.level, self.generator)
            self._expert, self._optimizer = index, None
        params = self.cms.trainable_expert(self.level, index)  # freezes every other expert, base stays frozen
        if self._optimizer is None:
            self._optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)
        return index, params

    def new_expert(self) -> None:
        """Forget the trained expert and its optimizer state (after a sleep pruned the level); the buffer stays."""
        self._expert, self._optimizer = None, None
        self.cms.freeze_experts()

    def _sequence(self, chunk: list[int]) -> list[int]:
        return ([self.last_token] if self.last_token is not None else []) + chunk

    def feed(self, token_ids: Sequence[int]) -> list[float]:
        """Take incoming tokens; every C-th token triggers one step on the chunk. Returns the losses of the steps."""
        out = []
        for token in token_ids:
            self.buffer.append(int(token))
            self.tokens_seen += 1
            if len(self.buffer) == self.chunk_tokens:
                out.append(self._step(self.buffer))
                self.last_token, self.buffer = self.buffer[-1], []
        return out

    def _step(self, chunk: list[int]) -> float:
        ids = self._sequence(chunk)
        if len(ids) < 2:  # C = 1 on the very first token: nothing to predict yet
            return float("nan")
        _, params = self._current_expert()
        with torch.enable_grad():
            loss = _lm_loss(self.cms, ids)
            loss.backward()
        self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        for p in params:
            p.requires_grad_(False)
        self.steps += 1
        self.step_at_token.append(self.tokens_seen)
        self.losses.append(float(loss.detach()))
        return self.losses[-1]

    def pending_gradient(self) -> list[torch.Tensor] | None:
        """Compute (do not apply) the gradient of the buffered tokens into the current expert; None if none."""
        ids = self._sequence(self.buffer)
        if len(ids) < 2 or self.expert is None:
            return None
        params = self.cms.trainable_expert(self.level, self.expert)
        with torch.enable_grad():
            grads = torch.autograd.grad(_lm_loss(self.cms, ids), params, allow_unused=True)
        for p in params:
            p.requires_grad_(False)
        return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]


def _batches(prompts: Sequence[Sequence[int]], batch_size: int, device) -> list[tuple[torch.Tensor, ...]]:
    """Right-padded (ids, attention mask, loss mask) batches; loss mask [b, L-1] marks real next-token targets."""
    out = []
    for start in range(0, len(prompts), batch_size):
        ids, attn = pad_rows(prompts[start : start + batch_size], 0, False, device)
        out.append((ids, attn, attn[:, 1:]))
    return out


def _logits(cms, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    return cms(input_ids=ids, attention_mask=attn).logits[:, :-1]


def consolidate_fast_level(cms, sender_level: str, receiver_level: str, prompts_token_ids: Sequence[Sequence[int]],
                           steps: int, lr: float, divergence: str = "jsd", beta: float = 0.5,
                           temperature: float = 1.0, batch_size: int = 8, teacher_topk: int | None = None,
                           updater: OnlineFastLevelUpdater | None = None,
                           generator: torch.Generator | None = None) -> dict:
    """Sleep for a fast MLP sender: distil its experts into ONE new receiver expert, then prune the sender.

    prompts_token_ids: token-id lists (at least 2 tokens each) the student is teacher-forced on. teacher_topk keeps
    only the teacher's top-k log-probs per position (a bounded cache for big vocabularies; None = full logits).
    Returns stats: sender_experts (pruned), receiver_expert, losses, teacher_batches, pending_* and seconds.
    """
    started = time.perf_counter()
    if sender_level == receiver_level:
        raise ValueError("sender and receiver must be different levels")
    cms.level(receiver_level)
    prompts = [p for p in prompts_token_ids if len(p) >= 2]
    if not prompts:
        raise ValueError("consolidate_fast_level needs prompts of at least 2 tokens")
    sender = cms.active_experts(sender_level)
    stats = {"sender_level": sender_level, "receiver_level": receiver_level, "sender_experts": sender,
             "receiver_expert": None, "losses": [], "teacher_batches": 0, "pending_tokens": 0,
             "pending_update": "none", "skipped": not sender}
    if not sender:  # nothing learnt since the last sleep: no expert is spent on nothing
        stats["seconds"] = round(time.perf_counter() - started, 3)
        return stats

    # Compute: the pending update of the sender (held, not applied)
    pending = updater.pending_gradient() if updater is not None else None
    stats["pending_tokens"] = len(updater.buffer) if updater is not None else 0

    # Consolidate, teacher: the model as it is, once per prompt batch, no grad, before the new expert exists
    batches = _batches(prompts, batch_size, _device(cms))
    cms.freeze_experts()
    teachers = []
    with torch.no_grad():
        for ids, attn, _ in batches:
            t = _logits(cms, ids, attn).float()
            teachers.append(teacher_topk_logprobs(t, teacher_topk, temperature) if teacher_topk else t)
    stats["teacher_batches"] = len(teachers)

    # Consolidate, student: sender masked off, one new receiver expert, only it trains
    index = cms.activate_expert(receiver_level, generator)
    stats["receiver_expert"] = index
    try:
        params = cms.trainable_expert(receiver_level, index)
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        with cms.experts_off(sender_level, sender), torch.enable_grad():
            for step in range(steps):
                n = step % len(batches)
                ids, attn, loss_mask = batches[n]
                loss = generalized_distillation_loss(teachers[n], _logits(cms, ids, attn), loss_mask, divergence,
                                                     beta, temperature)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                stats["losses"].append(float(loss.detach()))
    except BaseException:
        cms.reset_expert(receiver_level, index)  # leave the model exactly as it was
        raise
    finally:
        cms.freeze_experts()

    # Update: prune the sender, keep (and settle) the new receiver expert; the pending update is moot (see module)
    cms.reset_level(sender_level)
    cms.settle_new_experts(receiver_level)
    if pending is not None:
        stats["pending_update"] = "discarded: its expert was pruned; its tokens stay buffered for the next fast expert"
        del pending
    if updater is not None:
        updater.new_expert()
    stats["seconds"] = round(time.perf_counter() - started, 3)
    return stats
