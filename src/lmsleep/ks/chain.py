"""The multi-level consolidation chain (PAPER §2-§3): context -> level 1 -> level 2 -> ... -> level n.

    cfg = CMSConfig(levels=[LevelSpec(name="l1", update_period=1, pool_size=2),
                            LevelSpec(name="l2", update_period=2, pool_size=2),
                            LevelSpec(name="l3", update_period=4, pool_size=8)], period_unit="steps")
    chain = ConsolidationChain(wrap_model(model, cfg), ChainSettings(steps=24), prefix_ids=[bos])
    for window, prompts in stream:                   # token ids of one context window, prompts made from it
        events = chain.process_window(window, prompts)
    print(plan_schedule(cfg, [64] * 8))             # the same schedule, without a model

A stream of context windows is consolidated upward, fastest level first (levels are listed fastest first):

- Every window, the CONTEXT is the sender (`consolidate_context`): teacher = the model as it is with the window in
  its context, student = the same network without the window plus ONE new expert of level 1. The student is
  teacher-forced on prompts made from the window (no sampling: cheap and deterministic) and trained with
  `generalized_distillation_loss` on the next-token distributions of every prompt position and of the token after
  the prompt. The teacher's logits are computed once, under no_grad, before the new expert exists.
- Level k (k >= 2) is updated every `update_period` of ITS OWN LevelSpec (the field's existing meaning: "C(level):
  updated every this many period_units, sleep fires just before"; PAPER §3: receiver = the level being updated,
  sender = the faster level below it). Its update is a sleep with level k-1 as sender
  (`lmsleep.ks.senders.consolidate_fast_level`): level k-1's experts are distilled into ONE new expert of level k
  and level k-1 is reset. In the brief's words: every C(k) windows level k-1 moves into level k. Several levels due
  after the same window go fastest first, so a window's knowledge can travel more than one level at once.
- Level 1 receives the context every window, so in window units its update_period must be 1 (a window the context
  sender skipped would be lost); in token units it is not used. The last level's experts never move: it only
  receives.
- Pools are finite. Before any level receives an expert, a FULL level is first consolidated upward (event reason
  "pool full"), cascading if the level above is full too; a full LAST level cannot move anywhere and the chain
  refuses with a RuntimeError (raise its pool_size or add a level). `plan_schedule` shows this before any training.
- An empty sender spends no expert: a level due while its sender holds nothing is skipped.

period_unit: "steps" and "nights" count windows (each window is one sleep of the context sender); "tokens" counts the
window's tokens, and level k is due when the running total crosses a multiple of its period.

Prompts travel with the knowledge: a level holds the prompts of every window it has absorbed (each with the context
teacher's greedy next token appended, a one-token teacher completion), and a level-to-level consolidation is
teacher-forced on (at most `max_level_prompts` of) the sender's prompts. A refusal (full last level) is raised
before any training and leaves chain and model as they were; any other failure mid-window leaves the finished
consolidations in place (`reset()` starts a clean stream). Tested in tests/test_ks_chain.py.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from lmsleep.cms.config import CMSConfig
from lmsleep.ks.divergence import generalized_distillation_loss
from lmsleep.ks.rollout import pad_rows
from lmsleep.ks.senders import consolidate_fast_level

CONTEXT = "context"  # the sender name of the attention level (the window in context)
WINDOW_UNITS = ("steps", "nights")


@dataclass
class ChainSettings:
    steps: int = 24  # optimizer steps of one context consolidation (context -> level 1)
    level_steps: int = 24  # optimizer steps of one level -> level consolidation
    lr: float = 1e-2
    divergence: str = "forward_kl"
    beta: float = 0.5  # jsd only
    temperature: float = 1.0
    batch_size: int = 16
    max_level_prompts: int = 64  # prompts a level -> level consolidation is teacher-forced on (a seeded sample)


@dataclass
class Consolidation:
    """One scheduled sleep: after window `window` (1-based), `sender` moves into a new expert of `receiver`."""

    window: int
    sender: str  # CONTEXT or a level name
    receiver: str
    reason: str  # "every window" | "period" | "pool full"


@dataclass
class ChainSchedule:
    """Which consolidations happen after which window, from the config alone (it tracks experts per level)."""

    cfg: CMSConfig
    windows: int = 0
    tokens: int = 0
    active: dict = field(default_factory=dict)  # level -> experts active (as the schedule expects them)

    def __post_init__(self) -> None:
        self.names = [lv.name for lv in self.cfg.levels]
        unit = self.cfg.period_unit
        if unit not in WINDOW_UNITS + ("tokens",):
            raise ValueError(f"the chain counts windows ('steps', 'nights') or 'tokens', not {unit!r}")
        first = self.cfg.levels[0]
        if unit in WINDOW_UNITS and first.update_period != 1:
            raise ValueError(f"level {first.name!r} receives the context every window: its update_period must be 1 "
                             f"(got {first.update_period}); slow the chain down in the levels above it")
        self.active = {name: 0 for name in self.names}

    def _due(self, level: int, tokens_before: int) -> bool:
        period = self.cfg.levels[level].update_period
        if self.cfg.period_unit == "tokens":
            return self.tokens // period > tokens_before // period
        return self.windows % period == 0

    def _make_room(self, level: int, events: list[Consolidation]) -> None:
        """Before `level` receives: if its pool is full, consolidate it upward first (cascading)."""
        spec = self.cfg.levels[level]
        if self.active[spec.name] < spec.pool_size:
            return
        if level + 1 == len(self.names):
            raise RuntimeError(f"chain: the last level {spec.name!r} is full ({spec.pool_size} experts) after window "
                               f"{self.windows} and has no slower level to consolidate into: raise its pool_size or "
                               "add a level")
        self._move(level, level + 1, "pool full", events)

    def _move(self, sender: int, receiver: int, reason: str, events: list[Consolidation]) -> None:
        self._make_room(receiver, events)
        events.append(Consolidation(self.windows, self.names[sender], self.names[receiver], reason))
        self.active[self.names[receiver]] += 1
        self.active[self.names[sender]] = 0

    def advance(self, window_tokens: int) -> list[Consolidation]:
        """The consolidations after the next window (of `window_tokens` tokens), in the order they run."""
        saved = (self.windows, self.tokens, dict(self.active))
        tokens_before = self.tokens
        self.windows += 1
        self.tokens += int(window_tokens)
        events: list[Consolidation] = []
        try:
            self._make_room(0, events)
            events.append(Consolidation(self.windows, CONTEXT, self.names[0], "every window"))
            self.active[self.names[0]] += 1
            for level in range(1, len(self.names)):
                if self._due(level, tokens_before) and self.active[self.names[level - 1]] > 0:
                    self._move(level - 1, level, "period", events)
        except RuntimeError:  # a refusal leaves the schedule where it was
            self.windows, self.tokens, self.active = saved
            raise
        return events


def plan_schedule(cfg: CMSConfig, window_tokens: Sequence[int]) -> list[Consolidation]:
    """Every consolidation a chain over windows of these lengths would run (RuntimeError where a full last level
    would refuse), without a model."""
    schedule = ChainSchedule(cfg)
    return [event for n in window_tokens for event in schedule.advance(n)]


# ---------------------------------------------------------------- the context sender


def _device(cms) -> torch.device:
    return next(cms.base.parameters()).device


def consolidate_context(cms, level: str, window_ids: Sequence[int], prompts: Sequence[Sequence[int]],
                        prefix_ids: Sequence[int] = (), steps: int = 24, lr: float = 1e-2,
                        divergence: str = "forward_kl", beta: float = 0.5, temperature: float = 1.0,
                        batch_size: int = 16, generator: torch.Generator | None = None) -> dict:
    """Context sender (PAPER §3): distil the model-with-the-window-in-context into ONE new expert of `level`.

    Teacher input = prefix + window + prompt, student input = prefix + prompt (no window); the compared positions are
    those predicting each prompt token (the first one too, when there is a prefix) and the token after the prompt.
    Returns stats: receiver_expert, losses, teacher_next (the teacher's greedy token after each prompt), seconds.
    If training fails, the new expert is removed and the model is as it was."""
    started = time.perf_counter()
    prompts = [list(p) for p in prompts if len(p) >= 1]
    if not prompts:
        raise ValueError("consolidate_context needs at least one non-empty prompt made from the window")
    prefix, window = list(prefix_ids), list(window_ids)
    limit = getattr(cms.config, "max_position_embeddings", None)
    longest = len(prefix) + len(window) + max(len(p) for p in prompts)
    if limit is not None and longest > limit:
        raise ValueError(f"window ({len(window)} tokens) + prompt does not fit the model's context ({longest} > "
                         f"{limit} positions)")
    start = max(len(prefix) - 1, 0)  # the position predicting the prompt's first token (none without a prefix)
    device = _device(cms)
    batches = []
    for b in range(0, len(prompts), batch_size):
        rows = prompts[b : b + batch_size]
        spans = [len(p) + (1 if prefix else 0) for p in rows]  # positions compared per row
        width = max(spans)
        mask = (torch.arange(width)[None] < torch.tensor(spans)[:, None]).float().to(device)
        student = pad_rows([prefix + p for p in rows], 0, False, device)
        teacher = pad_rows([prefix + window + p for p in rows], 0, False, device)
        batches.append((student, teacher, mask, width, [n - 1 for n in spans]))

    cms.freeze_experts()
    teachers, teacher_next = [], []
    with torch.no_grad():  # the teacher is the model as it is, before the new expert exists
        for _, (ids, attn), mask, width, last in batches:
            logits = cms(input_ids=ids, attention_mask=attn).logits[:, start + len(window) : start + len(window) +
                                                                      width].float()
            teachers.append(logits)
            teacher_next += [int(logits[i, j].argmax()) for i, j in enumerate(last)]

    index = cms.activate_expert(level, generator)
    losses = []
    try:
        params = cms.trainable_expert(level, index)
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        with torch.enable_grad():
            for step in range(steps):
                n = step % len(batches)
                (ids, attn), _, mask, width, _ = batches[n]
                student = cms(input_ids=ids, attention_mask=attn).logits[:, start : start + width]
                loss = generalized_distillation_loss(teachers[n], student, mask, divergence, beta, temperature)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
    except BaseException:
        cms.reset_expert(level, index)
        raise
    finally:
        cms.freeze_experts()
    cms.settle_new_experts(level)
    return {"sender_level": CONTEXT, "receiver_level": level, "receiver_expert": index, "losses": losses,
            "prompts": len(prompts), "teacher_next": teacher_next, "seconds": round(time.perf_counter() - started, 3)}


# ---------------------------------------------------------------- the chain


class ConsolidationChain:
    """A CMS whose levels consolidate a stream of context windows upward (see the module docstring)."""

    def __init__(self, cms, settings: ChainSettings | None = None, prefix_ids: Sequence[int] = (), seed: int = 0):
        self.cms, self.settings, self.prefix_ids, self.seed = cms, settings or ChainSettings(), list(prefix_ids), seed
        self.schedule = ChainSchedule(cms.cfg)
        self.names = self.schedule.names
        self.held: dict[str, list[list[int]]] = {name: [] for name in self.names}  # prompts each level absorbed
        self.history: list[dict] = []

    def reset(self) -> None:
        """Every level emptied, the schedule restarted: a new stream."""
        for name in self.names:
            self.cms.reset_level(name)
        self.schedule = ChainSchedule(self.cms.cfg)
        self.held = {name: [] for name in self.names}
        self.history = []

    def _generator(self, window: int, n: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + window * 101 + n)

    def process_window(self, window_ids: Sequence[int], prompts: Sequence[Sequence[int]]) -> list[dict]:
        """Consolidate one window (its prompts made from it alone) and run every level due; returns their stats."""
        events = self.schedule.advance(len(window_ids))
        s = self.settings
        done = []
        for n, event in enumerate(events):
            if event.sender == CONTEXT:
                stats = consolidate_context(self.cms, event.receiver, window_ids, prompts, self.prefix_ids, s.steps,
                                            s.lr, s.divergence, s.beta, s.temperature, s.batch_size,
                                            self._generator(event.window, n))
                self.held[event.receiver] += [self.prefix_ids + list(p) + [t]
                                              for p, t in zip(prompts, stats["teacher_next"])]
            else:
                held = self.held[event.sender]
                rng = random.Random(f"{self.seed}-{event.window}-{n}")
                used = held if len(held) <= s.max_level_prompts else rng.sample(held, s.max_level_prompts)
                stats = consolidate_fast_level(self.cms, event.sender, event.receiver, used, s.level_steps, s.lr,
                                               s.divergence, s.beta, s.temperature, s.batch_size,
                                               generator=self._generator(event.window, n))
                self.held[event.receiver] += held
                self.held[event.sender] = []
            stats |= {"window": event.window, "sender": event.sender, "receiver": event.receiver,
                      "reason": event.reason}
            done.append(stats)
        live = {name: len(self.cms.active_experts(name)) for name in self.names}
        if live != self.schedule.active:
            raise RuntimeError(f"chain: live experts {live} differ from the schedule's {self.schedule.active}")
        self.history += done
        return done
