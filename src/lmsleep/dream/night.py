"""One night of dreaming, in memory: the function the dream stage and the bench harness call.

    cms, _, stats = consolidate_memories(model, tokenizer, memories, seed_cfg)          # the seed stage's result
    result = dream_and_rehearse(cms, tokenizer, memories, seed_cfg, dream_cfg, expert_index=stats["expert_index"])
    result.cms          # rehearsed: tonight's expert also trained on the accepted dreams (export_peft_adapter(...))
    result.dreams       # the ledger: every dream made, scored, kept, tested, rewarded, used
    result.writer       # the dream writer after ReST-EM (pass it as `writer=` next time, or save_writer(...))

Order (PAPER §5): tau per memory (from the model as it is) -> for each ReST-EM round: write m dreams per memory
(writer + random expert) -> score (gradient importance) -> keep top-k + b random -> train and test each on an
isolated LoRA copy (reward 1 if tau rose) -> SFT the writer on the rewarded dreams. Then the adapters leave the model
and every reward-1 dream rehearses tonight's expert by KS distillation. Switches (the paper's ablations):
dream_cfg.enabled (no dreaming: nothing happens), random_expert, grad_selection (random top-k), rest_em.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmsleep.dream.generation import write_dreams
from lmsleep.dream.ledger import Dream, ledger_summary, training_audit
from lmsleep.dream.model import TRIAL, WRITER, DreamModel, WriterState
from lmsleep.dream.rehearse import rehearse
from lmsleep.dream.rest_em import teach_writer
from lmsleep.dream.select import score_dreams, select
from lmsleep.dream.task import TaskItem, build_tasks, tau_value
from lmsleep.dream.trial import train_and_test
from lmsleep.ks.consolidate import LEVEL
from lmsleep.ks.drift_guard import guard_night


@dataclass
class DreamResult:
    cms: Any  # CMSModel: rehearsed (or untouched when nothing was accepted / dreaming is off)
    index: int  # tonight's expert in cms.level(level)
    dreams: list[Dream] = field(default_factory=list)
    tasks: dict[str, list[TaskItem]] = field(default_factory=dict)
    writer: WriterState | None = None
    rehearsal_losses: list[float] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)  # every text trained on (probe-leak audit)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def rehearsed(self) -> bool:
        return bool(self.rehearsal_losses)


def dream_and_rehearse(cms, tokenizer, memories: list[dict[str, Any]], seed_cfg, dream_cfg, expert_index: int = 0,
                       level: str = LEVEL, writer: str | Path | WriterState | None = None,
                       night_rows: list[dict[str, Any]] | None = None, drift_text: str | None = None,
                       reading: list[dict[str, str]] | None = None) -> DreamResult:
    """Dream about `memories` and rehearse tonight's expert (`expert_index` of `level`) on the accepted dreams.

    `cms` may have no free expert slot (consolidate_memories makes exactly one): then it is rewrapped with one more
    (`result.cms` is the object to use afterwards). `writer`: None (a fresh LoRA writer), a saved writer folder, or
    the WriterState of an earlier call. `night_rows`: the seed night's train_texts rows, mixed into rehearsal at
    dream_cfg.rehearsal_night_share (lmsleep.dream.rehearse). Rehearsal trains tonight's expert again, so the seed's
    drift guard (seed_cfg.ks_drift_budget / ks_reading_budget on `drift_text` / `reading`, None = the files seed_cfg
    names; lmsleep.ks.drift_guard.guard_night) runs again after it, over the whole night's expert."""
    started = time.perf_counter()
    if not dream_cfg.enabled:
        return DreamResult(cms, expert_index, stats={"enabled": False, "seconds": 0.0})
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    rng = random.Random(f"dream-{dream_cfg.seed}")
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(timings.get(name, 0.0) + now - since, 2)
        return now

    dm = DreamModel.attach(cms, tokenizer, level, expert_index, dream_cfg, writer)
    expert = sum(p.numel() for p in dm.cms.expert_parameters(level, expert_index))
    print(f"dream: {len(memories)} memories x {dream_cfg.dreams_per_memory} dreams x {dream_cfg.rest_em_rounds} "
          f"round(s), kinds {dream_cfg.kinds}, keep top-{dream_cfg.top_k} + {dream_cfg.random_b} random per memory "
          f"(<= {dream_cfg.max_trials} trials/round), tonight's expert {expert:,} params, writer "
          f"{sum(p.numel() for p in dm.adapter_parameters(WRITER).values()):,} params ({dm.writer_source}), trial "
          f"copy {sum(p.numel() for p in dm.adapter_parameters(TRIAL).values()):,} params; switches: random_expert="
          f"{dream_cfg.random_expert} grad_selection={dream_cfg.grad_selection} rest_em={dream_cfg.rest_em}")
    t = time.perf_counter()
    tasks = build_tasks(dm, memories, dream_cfg, rng)
    with dm.use(None):
        tau_before = {mid: tau_value(dm, items, dream_cfg) for mid, items in tasks.items()}
    t = lap("tau", t)

    dreams: list[Dream] = []
    writer_losses: list[float] = []
    for round_no in range(dream_cfg.rest_em_rounds if dream_cfg.rest_em else 1):
        made = write_dreams(dm, memories, dream_cfg, round_no, rng)
        t = lap("write", t)
        score_dreams(dm, made, tasks, dream_cfg, rng)
        kept = select(made, dream_cfg, rng)
        t = lap("select", t)
        train_and_test(dm, kept, tasks, tau_before, dream_cfg)
        t = lap("trial", t)
        if dream_cfg.rest_em:
            writer_losses += teach_writer(dm, made, dream_cfg, rng)
            t = lap("rest_em", t)
        dreams += made
        print(f"dream: round {round_no}: {len(made)} made, {sum(d.malformed is None for d in made)} well-formed, "
              f"{len(kept)} tested, {sum(d.reward == 1 for d in made)} rewarded")

    cms, writer_state = dm.detach()
    losses, audit = rehearse(cms, tokenizer, dreams, memories, seed_cfg, dream_cfg, level, expert_index, night_rows)
    t = lap("rehearse", t)
    guard = guard_night(cms, tokenizer, seed_cfg, drift_text, reading) if losses else None
    lap("drift_guard", t)
    stats = {"enabled": True, **ledger_summary(dreams), "rounds": dream_cfg.rest_em_rounds if dream_cfg.rest_em else 1,
             "tau_items": sum(len(items) for items in tasks.values()),
             "tau_recall_fallbacks": sum(items[0].kind == "recall" for items in tasks.values()),
             "tau_before": tau_before, "writer_losses": writer_losses, "rehearsal_steps": len(losses),
             "writer_from": writer_state.source, "phase_seconds": timings, "drift_guard": guard,
             "seconds": round(time.perf_counter() - started, 1)}
    print(f"dream: {stats['rewarded']}/{stats['tested']} trials rewarded, {stats['used']} dreams rehearsed in "
          f"{len(losses)} steps, {stats['seconds']} s {timings}")
    return DreamResult(cms, expert_index, dreams, tasks, writer_state, losses, training_audit(dreams) + audit, stats)
