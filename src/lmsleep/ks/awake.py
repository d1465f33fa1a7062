"""The seed stage with a fast MLP level as the sender (`seed.ks_sender: fast_level`; PAPER §3, the general case).

    cms, losses, stats = seed_through_fast_level(model, tokenizer, memories, cfg)   # cfg: lmsleep.config.SeedConfig
    cms, losses, stats = consolidate_by_sender(model, tokenizer, memories, cfg, replay=...)  # what cfg.ks_sender says

The nightly default sends the day's knowledge from the context (lmsleep.ks.consolidate). Here it travels the other
path the paper describes: the day is first read "awake" by test-time training of a fast level, then that level is
the sender of the night:

  awake   every memory's text is fed, in arrival order, to `OnlineFastLevelUpdater` on the level "awake": one
          next-token step into its current expert every `ks_fast_chunk_tokens` tokens (`ks_fast_lr`), the day read
          `ks_fast_passes` times (a serving process reads it once; the stage can re-read it because it has it all).
  sleep   `consolidate_fast_level` distils the model WITH the awake experts (teacher) into ONE new expert of the level
          "night" of the student (the awake experts masked), teacher-forced on the memories' sentences, for ks_steps
          steps at ks_lr with ks_divergence; then the awake level is reset (its experts pruned).

What is left is one expert in "night", exported as tonight's adapter exactly like the context sender's, so evaluate,
promote and later nights see no difference. Only text from the memories is read or trained on (never probes);
stats["train_texts"] lists it for train_texts.jsonl.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from lmsleep.allocator import return_freed_memory
from lmsleep.cms import CMSConfig, LevelSpec, wrap_model
from lmsleep.distributed import process_group
from lmsleep.ks.consolidate import expert_layers, night_steps
from lmsleep.ks.drift_guard import guard_night
from lmsleep.ks.samples import sentences
from lmsleep.ks.senders import OnlineFastLevelUpdater, consolidate_fast_level

AWAKE, NIGHT = "awake", "night"  # the sender (fast, written while awake) and the receiver of tonight's expert


def consolidate_by_sender(model, tokenizer, memories: list[dict[str, Any]], cfg, drift_text: str | None = None,
                          reading: list[dict[str, str]] | None = None, **context_options):
    """Tonight's KS night from the sender `cfg.ks_sender` names (the seed stage's and the benchmarks' one dispatch):
    fast_level -> seed_through_fast_level; context -> lmsleep.ks.consolidate.consolidate_memories with
    `context_options` (replay, anchors, teacher_cache, teacher_id), which only the context sender reads.

    With cfg.ks_drift_budget > 0 the night's expert is then scaled into the budget on `drift_text` (None: read
    cfg.ks_drift_text, '' = the bundled text; lmsleep.ks.drift_guard) and, with cfg.ks_reading_budget > 0, into that
    budget on `reading` (None: read cfg.ks_reading_file); reported in stats["drift_guard"]; in a data-parallel seed only
    rank 0, the one that exports the expert, runs it."""
    if cfg.ks_sender == "fast_level":
        cms, losses, stats = seed_through_fast_level(model, tokenizer, memories, cfg)
    else:
        from lmsleep.ks.consolidate import consolidate_memories

        cms, losses, stats = consolidate_memories(model, tokenizer, memories, cfg, **context_options)
    # only rank 0 exports the expert: on the other ranks the guard would be waste
    guard = guard_night(cms, tokenizer, cfg, drift_text, reading) if process_group()[0] == 0 else None
    if guard is not None:
        stats["drift_guard"] = guard
    return cms, losses, stats


def seed_through_fast_level(model, tokenizer, memories: list[dict[str, Any]], cfg):
    """Awake test-time training of a fast level on the memories, then its consolidation into one night expert.
    Returns (cms with only the night expert active, losses of the consolidation, stats)."""
    started = time.perf_counter()
    return_freed_memory(cfg.ks_return_freed_memory_kb)  # before the awake steps allocate (as the context sender)
    torch.manual_seed(cfg.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    rank, layers = cfg.ks_expert_rank, expert_layers(cfg, model)
    cms = wrap_model(model, CMSConfig(levels=[
        LevelSpec(name=AWAKE, layers=layers, pool_size=1, rank=rank, alpha=2.0 * rank),
        LevelSpec(name=NIGHT, layers=layers, pool_size=1, rank=rank, alpha=2.0 * rank)]))
    generator = torch.Generator().manual_seed(cfg.seed)
    updater = OnlineFastLevelUpdater(cms, AWAKE, chunk_tokens=cfg.ks_fast_chunk_tokens, lr=cfg.ks_fast_lr,
                                     generator=generator)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    day = [tokenizer(m["text"], add_special_tokens=False)["input_ids"][: cfg.max_length] + eos for m in memories]
    for _ in range(cfg.ks_fast_passes):
        for ids in day:
            updater.feed(ids)
    if updater.steps == 0:
        raise ValueError(f"ks fast_level: the day has {sum(map(len, day))} tokens x {cfg.ks_fast_passes} passes, "
                         f"fewer than one chunk of ks_fast_chunk_tokens={cfg.ks_fast_chunk_tokens}: nothing was "
                         "learned awake; lower the chunk or raise the passes")
    texts = [s for m in memories for s in sentences(m["text"])] + [m["text"] for m in memories]
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"][: cfg.max_length] for t in texts]
    slept = consolidate_fast_level(cms, AWAKE, NIGHT, prompts, steps=night_steps(cfg, len(prompts)), lr=cfg.ks_lr,
                                   divergence=cfg.ks_divergence, beta=cfg.ks_beta, batch_size=cfg.batch_size,
                                   teacher_topk=cfg.ks_teacher_topk or None, updater=updater, generator=generator)
    cms.eval()
    stats = {"sender": "fast_level", "awake_steps": updater.steps, "awake_tokens": updater.tokens_seen,
             "awake_losses": updater.losses, "prompts": len(prompts), "teacher_samples": slept["teacher_batches"],
             "teacher_cache": "off", "expert_index": slept["receiver_expert"],
             "pending_tokens_discarded": slept.get("pending_tokens", 0),
             "seconds": round(time.perf_counter() - started, 1),
             "train_texts": [{"memory_id": m.get("id"), "kind": "awake", "text": m["text"]} for m in memories]
             + [{"kind": "sleep", "text": t} for t in texts]}
    return cms, list(slept["losses"]), stats
