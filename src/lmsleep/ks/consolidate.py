"""Knowledge Seeding with the context as sender (PAPER §3, the nightly default): `seed.method: ks`.

    cms, losses, stats = consolidate_memories(model, tokenizer, memories, cfg)   # cfg: lmsleep.config.SeedConfig
    export_peft_adapter(cms, "models/nights/<night>/adapter")                    # exact: the router is dense

Teacher and student are ONE network (no copy): teacher = the model with the memory text in its context and the new
expert switched off; student = the model without the memory, plus ONE new low-rank expert in the first CMS level
(B = 0 at activation: function preserving). Only that expert's tensors are in the optimizer.

Prompts x come from the memory text alone (never from probes), two kinds per memory:
  continuation  "Continue: <first k words>"                           (k ~ U[3, half the words])
  question      a question the teacher writes about the memory ("Write a question about the text above.", sampled),
                then put to both with the evaluate stage's own format (lmsleep.prompts.question_messages)
  replay        up to `ks_replay_prompts` prompts of earlier nights of the champion lineage (their train_texts.jsonl:
                KS prompts as they were, SFT texts as "Continue: <first words>"), passed in by the seed stage as
                `replay`. Their teacher is the current model WITHOUT any memory in context (and the new expert off):
                that knowledge is already in the weights, so the student must keep answering as before. A retention
                regulariser against forgetting earlier nights; audited with "source": "replay:<night>".

Distillation (GKD, §4a). Every prompt gets one teacher completion y, sampled once; its teacher logits over y are
computed once (`_teacher_logits`, no grad) and reused every time the prompt comes back. With probability
`ks_lambda` a prompt's turn is on-policy instead: y is sampled from the current student (torch.no_grad) and scored by
the teacher once. Teacher forward = teacher prompt + y, student forward = student prompt + y; the two prompts have
different lengths, so the logits compared are those at positions len(prompt)-1 .. len(prompt)+len(y)-2 of each
(the ones that predict y's tokens). Divergence: `ks_divergence` (`ks_beta` for jsd), mean over y's tokens.

LTI (§4b), when `ks_alpha` < 1: each step takes one teacher continuation d (a "dream" of the memory), cuts it at a
random prefix, lets the student complete the prefix `ks_group_size` times, rewards r = gamma r_sem + (1-gamma) r_abs
(SemanticJudge, exact-match fallback) and adds REINFORCE with group-normalised advantages:
loss = alpha * D + (1 - alpha) * reinforce (`combined_ks_objective`).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from lmsleep.cms import CMSConfig, LevelSpec, wrap_model
from lmsleep.generation import stop_token_ids
from lmsleep.ks.divergence import generalized_distillation_loss
from lmsleep.ks.imitation import (combined_ks_objective, completion_logprobs, group_normalised_advantages,
                                  imitation_reward, random_prefix_split, reinforce_loss)
from lmsleep.memory import training_text
from lmsleep.prompts import question_messages

LEVEL = "night"  # the first (and here only) CMS level: the receiver of tonight's expert
QUESTION_INSTRUCTION = "Write a question about the text above."
GENERATION_BATCH = 16  # prompts per generate call: decoding on CPU is per-token overhead, wider batches amortise it


@dataclass(eq=False)  # identity, not field equality (fields hold tensors)
class Sample:
    memory_id: str
    kind: str  # continuation | question | on-policy
    student_prompt: list[int]
    teacher_prompt: list[int]
    prompt_text: str  # what the student is asked (for the audit)
    completion: list[int]  # y
    teacher: torch.Tensor | None = None  # teacher logits over y, [len(y), vocab] float32, computed once
    source: str = "memory"  # "memory" (tonight) or "replay:<night>" (an earlier night's prompt, no memory in context)


def _messages(instruction: str, memory: str | None) -> list[dict[str, str]]:
    content = instruction if memory is None else f"Text:\n{memory.strip()}\n\n{instruction}"
    return [{"role": "user", "content": content}]


def _encode(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _pad(rows: list[list[int]], pad_id: int, left: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span], mask[i, span] = torch.tensor(r, dtype=torch.long), 1
    return ids.to(device), mask.to(device)


def _sample(cms, tokenizer, prompts: list[list[int]], cfg, n: int = 1, max_new_tokens: int | None = None):
    """Sampled completions (token lists, cut after the first stop token), n per prompt; no gradient anywhere."""
    from transformers import GenerationConfig

    stops = stop_token_ids(cms, tokenizer)
    gen = GenerationConfig(do_sample=True, temperature=cfg.ks_temperature, top_k=0, top_p=1.0, use_cache=True,
                           max_new_tokens=max_new_tokens or cfg.ks_max_new_tokens, num_return_sequences=n,
                           eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
    device = next(cms.parameters()).device
    out: list[list[int]] = []
    with torch.no_grad():
        for start in range(0, len(prompts), GENERATION_BATCH):
            ids, mask = _pad(prompts[start : start + GENERATION_BATCH], tokenizer.pad_token_id, True, device)
            new = cms.generate(input_ids=ids, attention_mask=mask, generation_config=gen)[:, ids.shape[1] :]
            for row in new.tolist():
                cut = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
                out.append(row[:cut] or [stops[0]])
    return out


def _forward_completions(cms, rows: list[tuple[list[int], list[int]]], pad_id: int) -> list[torch.Tensor]:
    """One right-padded forward over prompt + y rows; per row the logits that predict y's tokens [len(y), vocab]."""
    device = next(cms.parameters()).device
    ids, mask = _pad([p + y for p, y in rows], pad_id, False, device)
    logits = cms(input_ids=ids, attention_mask=mask).logits
    return [logits[i, len(p) - 1 : len(p) + len(y) - 1] for i, (p, y) in enumerate(rows)]


def _teacher_logits(cms, samples: list[Sample], pad_id: int, index: int, batch_size: int) -> None:
    """The teacher pass, once per sample: memory in context, new expert off, inference mode; cached on the sample."""
    with torch.inference_mode(), cms.experts_off(LEVEL, [index]):
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            outs = _forward_completions(cms, [(s.teacher_prompt, s.completion) for s in chunk], pad_id)
            for s, logits in zip(chunk, outs):
                s.teacher = logits.float().cpu().clone()


def _replay_samples(tokenizer, replay: list[dict[str, Any]]) -> list[Sample]:
    """Earlier nights' prompts: student prompt == teacher prompt (no memory: the teacher is the model as it is)."""
    samples = []
    for r in replay:
        if r.get("kind") == "question":
            ids = _encode(tokenizer, question_messages(r["prompt"]))
        else:
            ids = _encode(tokenizer, _messages(r["prompt"], None))
        samples.append(Sample(str(r.get("memory_id", "")), r.get("kind", "continuation"), ids, ids, r["prompt"], [],
                              source=f"replay:{r['night']}"))
    return samples


def _build_prompts(cms, tokenizer, memories, cfg, rng: random.Random, index: int,
                   replay: list[dict[str, Any]] | None = None) -> list[Sample]:
    """Continuation and teacher-written question prompts per memory (plus replay prompts), each with one teacher
    completion y."""
    samples, question_asks = [], []
    for m in memories:
        mid, text = str(m["id"]), training_text(m)
        words = text.split()
        n_questions = cfg.ks_prompts_per_memory // 2
        for _ in range(cfg.ks_prompts_per_memory - n_questions):
            k = rng.randint(min(3, len(words)), max(3, len(words) // 2))
            instruction = "Continue: " + " ".join(words[:k])
            samples.append(Sample(mid, "continuation", _encode(tokenizer, _messages(instruction, None)),
                                  _encode(tokenizer, _messages(instruction, text)), instruction, []))
        question_asks += [(mid, text)] * n_questions
    with cms.experts_off(LEVEL, [index]):
        if question_asks:
            asks = [_encode(tokenizer, _messages(QUESTION_INSTRUCTION, text)) for _, text in question_asks]
            for (mid, text), q_ids in zip(question_asks, _sample(cms, tokenizer, asks, cfg, max_new_tokens=32)):
                q = tokenizer.decode(q_ids, skip_special_tokens=True).strip().split("\n")[0]
                q = q[: q.index("?") + 1] if "?" in q else q
                if len(q.split()) < 2:
                    continue  # an empty or one-word "question" teaches nothing
                samples.append(Sample(mid, "question", _encode(tokenizer, question_messages(q)),
                                      _encode(tokenizer, question_messages(q, text)), q, []))
        samples += _replay_samples(tokenizer, replay or [])
        for s, y in zip(samples, _sample(cms, tokenizer, [s.teacher_prompt for s in samples], cfg)):
            s.completion = y
    return samples


def _lti_loss(cms, tokenizer, samples: list[Sample], cfg, rng: random.Random, judge) -> tuple[torch.Tensor, float]:
    """REINFORCE on one random prefix of one teacher dream, ks_group_size student completions."""
    dreams = [s for s in samples if s.kind == "continuation" and s.source == "memory" and len(s.completion) >= 2]
    if not dreams:
        return None, 0.0
    d = rng.choice(dreams)
    prefix, rest = random_prefix_split(d.completion, 0.2, 0.8, rng)
    prompt = d.student_prompt + prefix
    completions = _sample(cms, tokenizer, [prompt], cfg, n=cfg.ks_group_size, max_new_tokens=len(rest) + 4)
    preds = [tokenizer.decode(c, skip_special_tokens=True) for c in completions]
    reference = tokenizer.decode(rest, skip_special_tokens=True)
    rewards = imitation_reward(preds, [reference] * len(preds), cfg.ks_gamma, cfg.ks_z0, judge)
    advantages = group_normalised_advantages(rewards[None])[0]
    if not advantages.abs().sum() > 0:  # a tied group carries no signal: skip its forward pass
        return None, float(rewards.mean())
    logits = _forward_completions(cms, [(prompt, c) for c in completions], tokenizer.pad_token_id)
    logps = torch.stack([completion_logprobs(lg[None], torch.tensor([c], device=lg.device),
                                             torch.ones(1, len(c), device=lg.device))[0]
                         for lg, c in zip(logits, completions)])
    return reinforce_loss(logps, advantages.to(logps.device)), float(rewards.mean())


def consolidate_memories(model, tokenizer, memories: list[dict[str, Any]], cfg,
                         replay: list[dict[str, Any]] | None = None):
    """Distil tonight's memories (teacher: in context) into one new CMS expert. Returns (cms, losses, stats).

    `replay`: earlier nights' prompts, dicts {"night", "kind" (continuation | question), "prompt", "memory_id"}
    (see lmsleep.stages.seed.replay_prompts); their teacher is the model without any memory (retention).

    stats["train_texts"] holds every prompt/completion trained on (for train_texts.jsonl, the probe-leak audit).
    """
    started = time.perf_counter()
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()  # eval: no dropout, teacher and student differ only by the context and the expert
    rank = cfg.ks_expert_rank
    layers = [int(i) for i in cfg.ks_expert_level_layers] or None  # [] = every decoder layer
    cms = wrap_model(model, CMSConfig(levels=[LevelSpec(name=LEVEL, layers=layers, pool_size=1, rank=rank,
                                                        alpha=2.0 * rank)]))
    index = cms.activate_expert(LEVEL, torch.Generator().manual_seed(cfg.seed))
    params = cms.trainable_expert(LEVEL, index)
    optimizer = torch.optim.AdamW(params, lr=cfg.ks_lr, weight_decay=0.0)
    judge = None
    if cfg.ks_alpha < 1.0 and cfg.ks_gamma > 0.0:
        from lmsleep.ks.judge import SemanticJudge

        judge = SemanticJudge(fallback=True)

    pool = _build_prompts(cms, tokenizer, memories, cfg, rng, index, replay)
    if not pool:
        raise ValueError("ks: no training prompts could be built from tonight's memories")
    _teacher_logits(cms, pool, tokenizer.pad_token_id, index, cfg.batch_size)
    teacher_samples = len(pool)
    audit = [{"memory_id": s.memory_id, "kind": s.kind, "source": s.source, "prompt": s.prompt_text,
              "completion": tokenizer.decode(s.completion, skip_special_tokens=True)} for s in pool]
    print(f"seed/ks: {len(memories)} memories, {len(pool)} prompts ({len(replay or [])} replay), {cfg.ks_steps} steps, expert rank {rank} "
          f"({sum(p.numel() for p in params):,} trainable), lambda {cfg.ks_lambda}, alpha {cfg.ks_alpha}, "
          f"{cfg.ks_divergence}, device {device}")

    order: list[Sample] = []
    losses, distill_losses, rl_losses, rewards = [], [], [], []
    for _ in tqdm(range(cfg.ks_steps), desc="seed/ks", unit="step"):
        batch = []
        for _ in range(min(cfg.batch_size, len(pool))):
            if not order:
                order = pool[:]
                rng.shuffle(order)
            batch.append(order.pop())
        distill = None
        if cfg.ks_alpha > 0.0:
            on_policy = [s for s in batch if rng.random() < cfg.ks_lambda]
            rows = [s for s in batch if s not in on_policy]
            if on_policy:  # fresh y from the current student, scored once by the teacher
                fresh = [Sample(s.memory_id, "on-policy", s.student_prompt, s.teacher_prompt, s.prompt_text, y,
                                source=s.source)
                         for s, y in zip(on_policy, _sample(cms, tokenizer, [s.student_prompt for s in on_policy],
                                                            cfg))]
                _teacher_logits(cms, fresh, tokenizer.pad_token_id, index, cfg.batch_size)
                teacher_samples += len(fresh)
                audit += [{"memory_id": s.memory_id, "kind": s.kind, "source": s.source, "prompt": s.prompt_text,
                           "completion": tokenizer.decode(s.completion, skip_special_tokens=True)} for s in fresh]
                rows += fresh
            student = _forward_completions(cms, [(s.student_prompt, s.completion) for s in rows],
                                           tokenizer.pad_token_id)
            teacher = torch.cat([s.teacher for s in rows]).to(device)[None]
            distill = generalized_distillation_loss(teacher, torch.cat(student)[None], None, cfg.ks_divergence,
                                                    cfg.ks_beta)
            distill_losses.append(float(distill.detach()))
        rl = None
        if cfg.ks_alpha < 1.0:
            rl, mean_reward = _lti_loss(cms, tokenizer, pool, cfg, rng, judge)
            rewards.append(mean_reward)
            rl_losses.append(float(rl.detach()) if rl is not None else 0.0)
            if rl is None:
                rl = torch.zeros((), device=device)
        loss = combined_ks_objective(rl, distill, cfg.ks_alpha)
        if loss.requires_grad:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))

    cms.eval()
    for p in params:
        p.requires_grad_(False)
    stats = {"prompts": len(pool), "replay_prompts": sum(s.source != "memory" for s in pool),
             "teacher_samples": teacher_samples, "distill_losses": distill_losses,
             "lti_losses": rl_losses, "lti_rewards": rewards, "expert_index": index,
             "judge": None if judge is None else ("model" if judge.uses_model else "exact-match"),
             "seconds": round(time.perf_counter() - started, 1), "train_texts": audit}
    return cms, losses, stats
