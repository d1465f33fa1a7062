"""Knowledge Seeding with the context as sender (PAPER §3, the nightly default): `seed.method: ks`.

    cms, losses, stats = consolidate_memories(model, tokenizer, memories, cfg)   # cfg: lmsleep.config.SeedConfig
    export_peft_adapter(cms, "models/nights/<night>/adapter")                    # exact: the router is dense

Teacher and student are ONE network (no copy): teacher = the model with the memory text in its context and the new
expert switched off; student = the model without the memory, plus ONE new low-rank expert in the first CMS level
(B = 0 at activation: function preserving). Only that expert's tensors are in the optimizer.

Prompts x come from the memory text alone (never from probes), built by `lmsleep.ks.samples`: continuations of
sentence starts and questions the teacher wrote about each sentence, plus up to `ks_replay_prompts` prompts of
earlier nights of the champion lineage, passed in by the seed stage as `replay` (audited with "source":
"replay:<night>"). A replay prompt's teacher is the current model WITHOUT any memory in context (and the new expert
off): the student must keep answering as before (a retention regulariser); or, for the `ks_replay_memory_share` read
again, the model reading that night's memory, scored on the answer that night's teacher wrote (what faded is taught
again). With `ks_reading_share` > 0 some of tonight's prompts, and with `ks_replay_reading_share` > 0 some of the
re-read replays, come back once more with the memory in the student's context too, the same y (`reading_twins`,
"source": "reading"): the expert must leave reading in context as it was. With `ks_grounded_only`, a memory prompt
whose teacher y names a name or number the memory and prompt do not hold is dropped before scoring
(`lmsleep.ks.samples.drop_ungrounded`; listed in stats["ungrounded_dropped"]); only y written up front is checked
(at ks_lambda 1 without a cache the teacher writes none: there is nothing to check). With `ks_asked_sentence_only`,
so is a question or cloze whose y holds none of the words its asked sentence (a cloze's blank; for a question, or a
sentence it matches better) adds to the prompt: answered from elsewhere in the memory (`answers_elsewhere`).

Distillation (GKD, §4a). Every prompt gets one teacher completion y, sampled once; the teacher's log-probs over y
are computed once (`lmsleep.ks.teacher.score`, inference mode; top-k with `ks_teacher_topk`) and reused every time
the prompt comes back, and with `teacher_cache` they are kept on disk for the next run with the same key. With probability
`ks_lambda` a prompt's turn is on-policy instead: y is sampled from the current student (torch.no_grad) and scored by
the teacher once. Teacher forward = teacher prompt + y, student forward = student prompt + y; the two prompts have
different lengths, so the logits compared are those at positions len(prompt)-1 .. len(prompt)+len(y)-2 of each
(the ones that predict y's tokens; `lmsleep.ks.rollout.completion_logits` computes only those).
When ks_lambda is 1 and no cache is asked for, no off-policy turn ever reads a teacher completion, so none is written
up front (LTI writes the one it needs, when it needs it). Divergence: `ks_divergence` (`ks_beta` for jsd), mean over y's tokens.

LTI (§4b), when `ks_alpha` < 1: each step takes one teacher continuation d (a "dream" of the memory), cuts it at a
random prefix, lets the student complete the prefix `ks_group_size` times, rewards r = gamma r_sem + (1-gamma) r_abs
(SemanticJudge, exact-match fallback) and adds REINFORCE with group-normalised advantages:
loss = alpha * D + (1 - alpha) * reinforce (`combined_ks_objective`).

The loop itself is `train_student`: consolidate_memories opens the new expert and hands it over; the benchmark's
"KS objective into a LoRA on the existing weights" baselines (opsd, sleep_ks-expansion: lmsleep.bench.baselines)
hand over a peft LoRA instead, whose disabled adapter is the teacher.

Data parallel (seed.accelerate_config, lmsleep.distributed): every process draws the same batches; each takes rows
rank, rank + world, ... of a batch (`distillation_loss(shard=...)`), weights its loss by its share of the batch's
tokens and the processes' gradients are summed, so an off-policy run trains the one-process expert (to float
rounding). The teacher's side is prepared once by rank 0 and shared through the teacher cache.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lmsleep.allocator import return_freed_memory
from lmsleep.cms import CMSConfig, LevelSpec, wrap_model
from lmsleep.cms.experts import decoder_layers
from lmsleep.distributed import my_rows, process_group
from lmsleep.ks import teacher as teacher_side
from lmsleep.ks.divergence import generalized_distillation_loss, with_hard_labels
from lmsleep.ks.imitation import (combined_ks_objective, completion_logprobs, group_normalised_advantages,
                                  imitation_reward, random_prefix_split, reinforce_loss)
from lmsleep.ks.rollout import checkpointed_layers, completion_logits, sample_completions
from lmsleep.ks.samples import Sample, build_samples, draw_batch, drop_ungrounded, reading_twins
from lmsleep.memory import training_text

LEVEL = "night"  # the first (and here only) CMS level: the receiver of tonight's expert


def _lti_loss(cms, tokenizer, samples: list[Sample], cfg, rng: random.Random, judge, level: str, index: int):
    """REINFORCE on one random prefix of one teacher dream, ks_group_size student completions."""
    dreams = [s for s in samples if s.kind == "continuation" and s.source == "memory"]
    if not dreams:
        return None, 0.0
    d = rng.choice(dreams)
    if not d.completion:  # lambda = 1 without a cache: this continuation's teacher sample is written now, once
        with cms.experts_off(level, [index]):
            teacher_side.write_completions(cms, tokenizer, [d], cfg)
    if len(d.completion) < 2:
        return None, 0.0
    prefix, rest = random_prefix_split(d.completion, 0.2, 0.8, rng)
    prompt = d.student_prompt + prefix
    completions = sample_completions(cms, tokenizer, [prompt], cfg.ks_temperature, len(rest) + 4,
                                     n=cfg.ks_group_size)
    preds = [tokenizer.decode(c, skip_special_tokens=True) for c in completions]
    reference = tokenizer.decode(rest, skip_special_tokens=True)
    rewards = imitation_reward(preds, [reference] * len(preds), cfg.ks_gamma, cfg.ks_z0, judge)
    advantages = group_normalised_advantages(rewards[None])[0]
    if not advantages.abs().sum() > 0:  # a tied group carries no signal: skip its forward pass
        return None, float(rewards.mean())
    with checkpointed_layers(cms, cfg.ks_activation_checkpointing):
        logits = completion_logits(cms, [(prompt, c) for c in completions], tokenizer.pad_token_id)
    logps = torch.stack([completion_logprobs(lg[None], torch.tensor([c], device=lg.device),
                                             torch.ones(1, len(c), device=lg.device))[0]
                         for lg, c in zip(logits, completions)])
    return reinforce_loss(logps, advantages.to(logps.device)), float(rewards.mean())


def night_steps(cfg, prompts: int, tonight: int | None = None) -> int:
    """The night's optimizer steps: ks_steps, raised to ks_passes passes over all its `prompts`, and to
    ks_tonight_passes batches' worth of `tonight`'s own memory prompts (default: all prompts), when that is more."""
    tonight = prompts if tonight is None else tonight
    wanted = [cfg.ks_steps]
    for passes, count in ((cfg.ks_passes, prompts), (getattr(cfg, "ks_tonight_passes", 0.0), tonight)):
        if passes > 0:
            wanted.append(math.ceil(passes * count / cfg.batch_size))
    return max(wanted)


def distillation_loss(cms, tokenizer, batch: list[Sample], cfg, level: str, index: int, rng: random.Random,
                      prefixes=None, shard: tuple[int, int] = (0, 1)) -> tuple[torch.Tensor, list[Sample], int]:
    """The GKD term of one step: each sample's turn is on-policy with probability ks_lambda (y sampled from the
    student, no grad), else it uses the teacher's own y; the teacher (expert `index` of `level` off) scores every y
    it has not scored yet, once. Returns (loss, the fresh on-policy samples, teacher samples scored now).

    `shard` = (rank, world) of a data-parallel run: this process takes rows rank, rank + world, ... of the batch and
    returns its share of the batch's token-mean loss (its summed divergence / the batch's tokens over all processes),
    so that summing the processes' gradients gives the one-process gradient. `rng` is drawn for every row on every
    process, which keeps the processes' batches in step.

    Shared by the night's loop and dream rehearsal (lmsleep.dream.rehearse)."""
    pad = tokenizer.pad_token_id
    flags = [rng.random() < cfg.ks_lambda for _ in batch]
    rank, world = shard
    mine = set(my_rows(len(batch), rank, world))
    on_policy = [s for i, (s, f) in enumerate(zip(batch, flags)) if f and i in mine]
    rows = [s for i, (s, f) in enumerate(zip(batch, flags)) if not f and i in mine]
    ys = sample_completions(cms, tokenizer, [s.student_prompt for s in on_policy], cfg.ks_temperature,
                            cfg.ks_max_new_tokens)
    fresh = [Sample(s.memory_id, "on-policy", s.student_prompt, s.teacher_prompt, s.prompt_text, y, source=s.source)
             for s, y in zip(on_policy, ys)]
    with cms.experts_off(level, [index]):
        scored = teacher_side.write_completions(cms, tokenizer, rows, cfg)  # rows never written; greedy: scored
        scored += teacher_side.score(cms, rows + fresh, pad, cfg.batch_size, cfg.ks_teacher_topk, prefixes)
    rows += fresh
    device = next(cms.base.parameters()).device
    with torch.enable_grad():
        if rows:
            with checkpointed_layers(cms, cfg.ks_activation_checkpointing):
                student = completion_logits(cms, [(s.student_prompt, s.completion) for s in rows], pad)
            logits = torch.cat(student)
            loss = generalized_distillation_loss(teacher_side.teacher_target(rows, device), logits[None], None,
                                                 cfg.ks_divergence, cfg.ks_beta)
            hard = getattr(cfg, "ks_hard_label_weight", 0.0) if not fresh else 0.0  # the teacher's own y only
            if hard > 0.0:
                loss = with_hard_labels(loss, logits, torch.tensor([t for s in rows for t in s.completion]), hard)
        else:  # a batch smaller than the world: this process adds nothing but still joins the gradient sum
            loss = torch.zeros((), device=device, requires_grad=True)
        if world > 1:
            tokens = torch.tensor(float(sum(len(s.completion) for s in rows)), device=device)
            total = tokens.clone()
            torch.distributed.all_reduce(total)  # on the model's device: nccl reduces only GPU tensors
            loss = loss * (tokens / total)
    for s in fresh:  # an on-policy y is used once: keep it for the audit, drop its teacher log-probs
        s.teacher_logprobs = s.teacher_ids = None
    return loss, fresh, scored


def _prepare_samples(cms, tokenizer, memories, cfg, level: str, index: int, replay, anchors,
                     teacher_cache: Path | None, teacher_id: str):  # noqa: PLR0913 - the night's inputs, passed through
    """Prompts (and, unless no off-policy turn will read them, teacher completions and log-probs) for the night.

    Returns (samples, the teacher's cached memory prefixes, teacher samples scored here, cache: off | hit | miss,
    the prompts dropped for an ungrounded y (seed.ks_grounded_only; none on a cache hit: the cache holds the kept)).
    The prefixes are kept for the loop only when it will score on-policy samples (ks_lambda > 0): they cost 46 KB
    per memory token on SmolLM2 (230 MB for 20 SQuAD passages), held all night. Otherwise each is made just before
    its memory's samples are scored and freed after them."""
    key = teacher_side.cache_key(teacher_id, memories, replay, anchors, cfg) if teacher_cache else ""
    cached = teacher_side.load_cache(teacher_cache, key) if teacher_cache else None
    rng = random.Random(cfg.seed)
    scored = 0
    dropped: list[dict] = []
    score_now = not cached and (cfg.ks_lambda < 1.0 or teacher_cache is not None)
    loop_scores = cfg.ks_lambda > 0  # only on-policy samples are scored inside the loop
    with cms.experts_off(level, [index]):
        samples = cached or build_samples(cms, tokenizer, memories, cfg, rng, replay, anchors)
        unscored = {id(s) for s in samples if not s.scored}
        if score_now:  # y first, holding no memory's prefix: the teacher's writing is a night's peak of memory
            teacher_side.write_completions(cms, tokenizer, samples, cfg)  # a greedy teacher scores y as it writes
            on_sentence = getattr(cfg, "ks_asked_sentence_only", False)
            if cfg.ks_grounded_only or on_sentence:  # before scoring: a dropped sample costs no scoring pass
                texts = {str(m["id"]): training_text(m) for m in memories}
                samples, dropped = drop_ungrounded(samples, texts, tokenizer, cfg.ks_grounded_only, on_sentence)
        prefixes = teacher_side.memory_prefixes(cms, samples) if loop_scores else {}
        if score_now:
            scoring = (cms, samples, tokenizer.pad_token_id, cfg.batch_size, cfg.ks_teacher_topk)
            if loop_scores:
                teacher_side.score(*scoring, prefixes)
            else:
                teacher_side.score_per_memory(*scoring)  # scores only what a sampled teacher's writing left
            scored = sum(id(s) in unscored and s.scored for s in samples)  # kept ones, by the writer or the scorer
    if teacher_cache and not cached:
        teacher_side.save_cache(teacher_cache, key, samples)
    # after the cache: twins are derived from the teacher's samples, so the cache (and its key) stay the same
    twins = reading_twins(samples, getattr(cfg, "ks_reading_share", 0.0), random.Random(f"reading-{cfg.seed}"),
                          getattr(cfg, "ks_replay_reading_share", 0.0))
    samples = samples + twins
    cache_status = "hit" if cached else "miss" if teacher_cache else "off"
    return samples, prefixes if loop_scores else {}, scored, cache_status, dropped


def expert_layers(cfg, model) -> list[int] | None:
    """The decoder layers tonight's expert covers: seed.ks_expert_level_layers' indices when it lists any, else the
    top ceil(ks_expert_layer_share x layers) of `model`'s decoder layers (the same share on any depth: 0.5 is 15-29
    of SmolLM2's 30, layer 1 of a 2-layer model); None = every layer."""
    if cfg.ks_expert_level_layers:
        return [int(i) for i in cfg.ks_expert_level_layers]
    share = float(getattr(cfg, "ks_expert_layer_share", 1.0))
    if not 0.0 < share <= 1.0:
        raise ValueError(f"seed.ks_expert_layer_share must be in (0, 1], got {share}")
    if share == 1.0:
        return None
    total = len(decoder_layers(getattr(model, "base", model)))
    return list(range(total - math.ceil(share * total), total))


def consolidate_memories(model, tokenizer, memories: list[dict[str, Any]], cfg,
                         replay: list[dict[str, Any]] | None = None, teacher_cache: Path | None = None,
                         teacher_id: str = "", anchors: list[str] | None = None, router: str = "dense"):
    """Distil tonight's memories (teacher: in context) into one new CMS expert. Returns (cms, losses, stats).

    `replay`: earlier nights' prompts, dicts {"night", "kind" (continuation | question), "prompt", "memory_id"}
    (see lmsleep.stages.seed.replay_prompts); their teacher is the model without any memory (retention), or, with
    "memory" and "completion" in the dict, the model reading that memory, scored on that completion.
    `anchors`: general requests (lmsleep.ks.samples.read_anchor_prompts), teacher = the model as it is.
    `teacher_cache`: a file for the teacher's samples and log-probs (lmsleep.ks.teacher); `teacher_id` must name the
    teacher's weights (e.g. the lineage), since a cache is valid only for the weights that wrote it.

    `router`: the level's CMSConfig router; "topk" gives the one expert a learned sigmoid gate per layer
    (bench/expert_scale.py --gated), "dense" is the night's, exactly mergeable.

    stats["train_texts"] holds every prompt/completion trained on (for train_texts.jsonl, the probe-leak audit).
    """
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()  # eval: no dropout, teacher and student differ only by the context and the expert
    rank = cfg.ks_expert_rank
    layers = expert_layers(cfg, model)
    cms = wrap_model(model, CMSConfig(levels=[LevelSpec(name=LEVEL, layers=layers, pool_size=1, rank=rank,
                                                        alpha=2.0 * rank)], router=router))
    index = cms.activate_expert(LEVEL, torch.Generator().manual_seed(cfg.seed))
    params = cms.trainable_expert(LEVEL, index)
    return train_student(cms, LEVEL, index, params, tokenizer, memories, cfg, replay=replay,
                         teacher_cache=teacher_cache, teacher_id=teacher_id, anchors=anchors,
                         receiver=f"expert rank {rank}", started=started,
                         up_params=cms.expert_up_parameters(LEVEL, index))


def _world_sum(value: torch.Tensor, world: int) -> float:
    """A logged number summed over the processes (each holds its share), as one process would log it."""
    if world > 1:
        value = value.detach().clone().float()
        torch.distributed.all_reduce(value)
    return float(value)


def _world_audit(samples: list[Sample], tokenizer, world: int) -> list[dict[str, Any]]:
    """The audit rows of every process's on-policy samples (each process sampled only its own rows)."""
    mine = [s.audit(tokenizer) for s in samples]
    if world == 1:
        return mine
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, mine)
    return [row for rows in gathered for row in rows]


LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_factor(schedule: str, step: int, steps: int) -> float:
    """What ks_lr is multiplied by at optimizer step `step` (0-based) of `steps`: 1 throughout (constant), or from 1
    at the first step down towards 0 at the last (cosine: half a cosine period; linear: a straight line)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"seed.ks_lr_schedule must be one of {', '.join(LR_SCHEDULES)}, not {schedule!r}")
    done = step / max(steps, 1)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * done))
    if schedule == "linear":
        return 1.0 - done
    return 1.0


def expert_optimizer(params: list[torch.nn.Parameter], up_params: list[torch.nn.Parameter] | None, cfg):
    """AdamW over `params`, the `up_params` among them in a group of their own at ks_lr x ks_lr_b_ratio (LoRA+'s
    knob; measured in docs/results.md: here a faster B mostly drifts more). Each group's "lr_ratio" is what the loop
    multiplies ks_lr and its schedule by."""
    if cfg.ks_lr_b_ratio <= 0:
        raise ValueError(f"ks_lr_b_ratio must be > 0, got {cfg.ks_lr_b_ratio}")
    up = {id(p) for p in up_params or []}
    if not up <= {id(p) for p in params}:
        raise ValueError("up_params must be among the trained params")
    groups = [{"params": [p for p in params if id(p) not in up], "lr_ratio": 1.0},
              {"params": [p for p in params if id(p) in up], "lr_ratio": float(cfg.ks_lr_b_ratio)}]
    groups = [g for g in groups if g["params"]]
    for group in groups:
        group["lr"] = cfg.ks_lr * group["lr_ratio"]
    return torch.optim.AdamW(groups, lr=cfg.ks_lr, weight_decay=0.0)


def train_student(student, level: str, index: int, params: list[torch.nn.Parameter], tokenizer,
                  memories: list[dict[str, Any]], cfg, replay: list[dict[str, Any]] | None = None,
                  teacher_cache: Path | None = None, teacher_id: str = "", anchors: list[str] | None = None,
                  receiver: str = "", started: float | None = None,
                  up_params: list[torch.nn.Parameter] | None = None):
    """The KS loop (prompts, teacher, GKD + LTI steps) on whatever receives tonight's knowledge: `params` are the only
    tensors in the optimizer, and inside `student.experts_off(level, [index])` the student must be the teacher's
    weights (the model as it was before the night: for the CMS, tonight's expert masked off). `student` is called
    like the model and has `.base` (the HF causal LM it runs); consolidate_memories passes a CMSModel, the
    benchmark's LoRA baselines (lmsleep.bench.baselines) a peft LoRA on the existing weights, adapter disabled as the
    teacher. `receiver` names what is trained in the start-up line; `up_params` (a subset of `params`: the B factors
    that start at zero) learn at ks_lr x ks_lr_b_ratio. Returns (student, losses, stats)."""
    started = time.perf_counter() if started is None else started
    return_freed_memory(cfg.ks_return_freed_memory_kb)  # before the first activation is allocated (lmsleep.allocator)
    device = next(student.base.parameters()).device
    optimizer = expert_optimizer(params, up_params, cfg)
    lr_factor(cfg.ks_lr_schedule, 0, 1)  # an unknown schedule fails here, before the teacher's side runs
    judge = None
    if cfg.ks_alpha < 1.0 and cfg.ks_gamma > 0.0:
        from lmsleep.ks.judge import SemanticJudge

        judge = SemanticJudge(fallback=True)

    rank, world = process_group()
    if world > 1 and teacher_cache is None:
        raise ValueError("ks on several processes shares the teacher through its cache: pass teacher_cache")
    if rank > 0:  # the teacher's side is written once, by rank 0, and read back here from its cache
        torch.distributed.barrier()
    pool, prefixes, teacher_samples, cache_status, ungrounded = _prepare_samples(
        student, tokenizer, memories, cfg, level, index, replay, anchors, teacher_cache, teacher_id)
    if world > 1 and rank == 0:
        torch.distributed.barrier()
    if rank > 0 and cache_status != "hit":
        raise RuntimeError(f"ks rank {rank}: rank 0's teacher cache was not found in {teacher_cache}")
    if not pool:
        raise ValueError("ks: no training prompts could be built from tonight's memories")
    steps = night_steps(cfg, len(pool), sum(s.source == "memory" for s in pool))
    # counted in the pool, not from the arguments: a count of what was asked for once hid anchors that never trained
    sources = {"replay_prompts": sum(s.source.startswith("replay") for s in pool),
               "replay_read_prompts": sum(s.rereads for s in pool),
               "anchor_prompts": sum(s.source == "anchor" for s in pool),
               "reading_prompts": sum(s.source == "reading" for s in pool)}
    print(f"seed/ks: {len(memories)} memories, {len(pool)} prompts ({sources['replay_prompts']} replay, "
          f"{sources['replay_read_prompts']} of them reading their memory, {sources['anchor_prompts']} anchor, "
          f"{sources['reading_prompts']} reading; {len(ungrounded)} dropped as ungrounded), {steps} "
          f"steps, {receiver} ({sum(p.numel() for p in params):,} trainable), lambda {cfg.ks_lambda}, "
          f"alpha {cfg.ks_alpha}, {cfg.ks_divergence}, teacher top-k {cfg.ks_teacher_topk or 'full'}, "
          f"cache {cache_status}, device {device.type}" + (f", process {rank} of {world}" if world > 1 else ""))

    # the loop's randomness starts from its own seeds, so a cached rerun trains exactly like the run that wrote it
    rng = random.Random(f"ks-train-{cfg.seed}")
    torch.manual_seed(cfg.seed + 1 + rank)  # each process samples its own on-policy rows
    order: list[Sample] = []
    on_policy_samples: list[Sample] = []
    losses, distill_losses, rl_losses, rewards = [], [], [], []
    for step in tqdm(range(steps), desc="seed/ks", unit="step"):
        for group in optimizer.param_groups:
            group["lr"] = cfg.ks_lr * group["lr_ratio"] * lr_factor(cfg.ks_lr_schedule, step, steps)
        batch = draw_batch(pool, order, cfg.batch_size, rng)
        distill = None
        if cfg.ks_alpha > 0.0:
            distill, fresh, scored = distillation_loss(student, tokenizer, batch, cfg, level, index, rng, prefixes,
                                                       shard=(rank, world))
            teacher_samples += scored
            distill_losses.append(_world_sum(distill.detach(), world))
            on_policy_samples += fresh
        rl = None
        if cfg.ks_alpha < 1.0:
            rl, mean_reward = _lti_loss(student, tokenizer, pool, cfg, rng, judge, level, index)
            if rl is None:
                rl = torch.zeros((), device=device)
            rl = rl / world  # each process draws its own LTI group: the processes' gradients average them
            rewards.append(_world_sum(torch.tensor(mean_reward, device=device), world) / world)
            rl_losses.append(_world_sum(rl.detach(), world))
        loss = combined_ks_objective(rl, distill, cfg.ks_alpha)
        if world > 1:  # the loss is each process's share: summed gradients = the one-process gradient
            if loss.requires_grad:
                loss.backward()
            for p in params:
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                torch.distributed.all_reduce(grad)
                p.grad = grad
            optimizer.step()
        elif loss.requires_grad:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(_world_sum(loss.detach(), world))

    student.eval()
    for p in params:
        p.requires_grad_(False)
    stats = {"prompts": len(pool), **sources, "teacher_samples": teacher_samples, "teacher_cache": cache_status,
             "trainable_parameters": sum(p.numel() for p in params),
             "ungrounded_dropped": ungrounded,
             "distill_losses": distill_losses,
             "lti_losses": rl_losses, "lti_rewards": rewards, "expert_index": index,
             "judge": None if judge is None else ("model" if judge.uses_model else "exact-match"),
             "seconds": round(time.perf_counter() - started, 1),
             "train_texts": [s.audit(tokenizer) for s in pool] + _world_audit(on_policy_samples, tokenizer, world)}
    return student, losses, stats
