"""seed: consolidate tonight's accepted memories into the model. Run: `lmsleep seed --night <id>`.

Method `sft` (the baseline, kept forever): a fresh LoRA adapter on top of the champion, trained with the language
modelling loss on the memory texts. Its output is the challenger: `models/nights/<night>/adapter/` plus
`lineage.json` (base + every adapter so far, tonight last, and the parent champion it started from).

Method `ks` (Knowledge Seeding, PAPER §3-§4, `lmsleep.ks.consolidate`): the memory in context is the teacher, the
model without it plus one new CMS expert the student; the expert is exported as the same kind of peft adapter.

Training data is built by `training_examples()` from `memory.training_text()` alone, never from probes, and is written
to `train_texts.jsonl` next to the adapter so anyone (and the probe-leak test) can audit exactly what was trained on.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lmsleep import registry
from lmsleep.config import Params, SeedConfig, Workspace
from lmsleep.errors import NightStopped
from lmsleep.distributed import (inside_launch, labelled_tokens, launch_stage, make_accelerator, my_rows,
                                 summed_token_loss)
from lmsleep.memory import read_json, read_jsonl, training_text, write_json, write_jsonl
from lmsleep.models import count_parameters, load_lineage

METHODS = ("sft", "ks")
KS_SENDERS = ("context", "fast_level")  # lmsleep.ks.consolidate | lmsleep.ks.awake


def training_examples(memories: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One example per memory: its id and its text. Probes are never read here."""
    return [{"memory_id": str(m["id"]), "text": training_text(m)} for m in memories]


def _batches(texts: list[str], batch_size: int, epochs: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    batches = []
    for _ in range(epochs):
        order = texts[:]
        rng.shuffle(order)
        batches += [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return batches


def train_sft_adapter(model, tokenizer, texts: list[str], cfg: SeedConfig):
    """Wrap `model` in a new LoRA adapter and fit it to `texts`.

    Returns (peft model, loss per step, the accelerator, the full state dict to save).

    Runs in this process or, under `accelerate launch`, as one rank of a DDP/FSDP world (see distributed.py).
    """
    from peft import LoraConfig, get_peft_model

    accelerator = make_accelerator()
    rank, world = accelerator.process_index, accelerator.num_processes
    torch.manual_seed(cfg.seed)  # same seed on every rank: identical LoRA initialisation everywhere
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    total, trainable = count_parameters(model)
    batches = _batches(texts, cfg.batch_size, cfg.epochs, cfg.seed)
    if accelerator.is_main_process:
        print(f"seed/sft: {len(texts)} memories, {len(batches)} steps, params {total:,}, trainable {trainable:,} "
              f"({trainable / total:.2%}), lora r={cfg.lora_rank}, processes {world}, device {accelerator.device}")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    eos = tokenizer.eos_token or ""
    tokenizer.padding_side = "right"
    model.train()
    losses = []
    for batch in tqdm(batches, desc="seed/sft", unit="step", disable=not accelerator.is_main_process):
        encoded = tokenizer([t + eos for t in batch], return_tensors="pt", padding=True, truncation=True,
                            max_length=cfg.max_length)
        labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
        tokens = labelled_tokens(labels)
        rows = my_rows(len(batch), rank, world)
        weight = 1.0
        if not rows:  # fewer texts than ranks: still join the gradient all-reduce, contributing zero
            rows, weight = [0], 0.0
        logits = model(input_ids=encoded["input_ids"][rows].to(accelerator.device),
                       attention_mask=encoded["attention_mask"][rows].to(accelerator.device)).logits
        loss_sum = summed_token_loss(logits, labels[rows].to(accelerator.device)) * weight
        accelerator.backward(loss_sum * world / tokens)  # DDP averages over `world`: the net is sum / tokens
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(accelerator.reduce(loss_sum.detach(), reduction="sum")) / tokens)
    state_dict = accelerator.get_state_dict(model)  # collective: gathers FSDP shards, a no-op view under DDP
    model = accelerator.unwrap_model(model)
    model.eval()
    return model, losses, accelerator, state_dict


def consolidate(ws: Workspace, params: Params, memories: list[dict[str, Any]]) -> dict[str, Any]:
    night, cfg = params.night.id, params.seed
    if cfg.method not in METHODS:
        raise ValueError(f"seed.method '{cfg.method}' is not one of {METHODS}")
    if cfg.method == "ks" and cfg.ks_sender not in KS_SENDERS:
        raise ValueError(f"seed.ks_sender '{cfg.ks_sender}' is not one of {KS_SENDERS}")
    out_dir = ws.night_model(night)
    parent = registry.champion(ws, params.prepare_model)
    if night in parent["nights"]:
        raise NightStopped(f"night '{night}' is already part of the champion; give tonight another --night id")

    model, tokenizer = load_lineage(ws, parent, params.prepare_model.dtype)
    if cfg.method == "ks":
        return _consolidate_ks(ws, params, parent, memories, model, tokenizer)
    examples = training_examples(memories)
    model, losses, accelerator, state_dict = train_sft_adapter(model, tokenizer, [e["text"] for e in examples], cfg)
    summary = {"night": night, "method": cfg.method, "memories": len(examples), "steps": len(losses),
               "processes": accelerator.num_processes, "loss_first": losses[0] if losses else None,
               "loss_last": losses[-1] if losses else None}
    if not accelerator.is_main_process:  # one writer: rank 0 holds the same adapter as every other rank
        return summary
    write_jsonl(out_dir / "train_texts.jsonl", examples)
    model.save_pretrained(out_dir / "adapter", state_dict=state_dict)
    return _write_outputs(ws, params, parent, losses, summary)


def replay_prompts(ws: Workspace, nights: list[str], count: int, seed: int,
                   memory_share: float = 0.0) -> list[dict[str, Any]]:
    """Up to `count` prompts of earlier `nights`, sampled (seeded) from their train_texts.jsonl, for ks replay.

    KS nights give their continuation / question prompts as they were (on-policy duplicates and replays of replays
    are skipped); SFT nights give "Continue: <first words>" of each trained text. Probes are never read: these files
    hold only what was trained on, which came from memory text alone.

    `memory_share` (seed.ks_replay_memory_share) of the chosen prompts (a seeded choice) also carry the answer their
    KS night's teacher wrote ("completion") and the text of their memory ("memory", from data/nights/<night>/
    accepted.jsonl), so tonight's teacher reads that memory again and is scored on that answer. One whose memory is
    not found there (or an SFT night's) is replayed with the model as it is, and the count of those is printed.
    """
    if not 0.0 <= memory_share <= 1.0:
        raise ValueError(f"params: seed.ks_replay_memory_share must be in [0, 1], got {memory_share}")
    if count <= 0:
        return []
    rng = random.Random(f"replay-{seed}")
    candidates, seen = [], set()
    for night in nights:
        path = ws.night_model(night) / "train_texts.jsonl"
        if not path.exists():
            continue
        for r in read_jsonl(path):
            if "prompt" in r:  # a ks night
                if r.get("kind") not in ("continuation", "question") or r.get("source", "memory") != "memory":
                    continue
                kind, prompt = r["kind"], r["prompt"]
            elif r.get("text"):  # an sft night: a continuation prompt from the text's first words
                words = r["text"].split()
                k = rng.randint(min(3, len(words)), max(3, len(words) // 2))
                kind, prompt = "continuation", "Continue: " + " ".join(words[:k])
            else:
                continue
            if (kind, prompt) not in seen:
                seen.add((kind, prompt))
                candidates.append({"night": night, "kind": kind, "prompt": prompt,
                                   "memory_id": str(r.get("memory_id", "")), "completion": r.get("completion")})
    chosen = rng.sample(candidates, min(count, len(candidates)))
    reread = set(rng.sample(range(len(chosen)), round(memory_share * len(chosen)))) if memory_share > 0 else set()
    return _with_memories(ws, chosen, reread)


def _with_memories(ws: Workspace, chosen: list[dict[str, Any]], reread: set[int]) -> list[dict[str, Any]]:
    """The replayed prompts; those at `reread` with their night's memory text and answer where both are known."""
    texts: dict[str, dict[str, str]] = {}
    for night in {chosen[i]["night"] for i in reread}:
        path = ws.night_data(night) / "accepted.jsonl"
        texts[night] = {str(m["id"]): training_text(m) for m in read_jsonl(path)} if path.exists() else {}
    out, alone = [], 0
    for i, r in enumerate(chosen):
        memory = texts[r["night"]].get(r["memory_id"]) if i in reread else None
        if memory and r.get("completion"):
            out.append(r | {"memory": memory})
            continue
        alone += i in reread
        out.append({k: v for k, v in r.items() if k != "completion"})
    if alone:
        print(f"seed/ks: {alone} of {len(reread)} replayed prompts to read again have no memory text or answer on "
              "record; the model as it is answers them")
    return out


def teacher_cache_dir(ws: Workspace, night: str) -> Path:
    """The KS teacher cache of a night (a DVC `persist` output of the stage: created even when unused)."""
    return ws.night_data(night) / "teacher_cache"


def guard_text(ws, params) -> str:
    """The drift guard's text (seed.ks_drift_text, '' = bundled), refused if it reads as the evaluate stage's reference
    text: the gate would then measure what the night was tuned on (Params refuses the same path; this, a copy)."""
    from lmsleep.ks.drift_guard import read_drift_text

    path = ws.resolve(params.seed.ks_drift_text) if params.seed.ks_drift_text else ""
    text = read_drift_text(path)
    reference = Path(ws.resolve(params.evaluate.reference_text))
    if reference.exists() and " ".join(text.split()) == " ".join(reference.read_text(encoding="utf-8").split()):
        raise ValueError(f"seed.ks_drift_text {path} holds evaluate.reference_text's text: the drift guard must read "
                         "a different general text than the promotion gate")
    return text


def guard_inputs(ws, params) -> tuple[str | None, list[dict[str, str]] | None]:
    """(drift text, reading items) for the drift guard, each None when its budget is 0; files resolved in `ws`."""
    from lmsleep.ks.drift_guard import read_reading_items

    cfg = params.seed
    drift_text = guard_text(ws, params) if cfg.ks_drift_budget > 0 else None
    reading = read_reading_items(ws.resolve(cfg.ks_reading_file) if cfg.ks_reading_file else "") \
        if cfg.ks_reading_budget > 0 else None
    return drift_text, reading


def _consolidate_ks(ws, params, parent, memories, model, tokenizer) -> dict[str, Any]:
    from lmsleep.cms import export_peft_adapter
    from lmsleep.ks.awake import consolidate_by_sender
    from lmsleep.ks.samples import read_anchor_prompts

    night, out_dir = params.night.id, ws.night_model(params.night.id)
    replay = replay_prompts(ws, parent["nights"], params.seed.ks_replay_prompts, params.seed.seed,
                            params.seed.ks_replay_memory_share)
    accelerator = make_accelerator() if inside_launch() else None  # joins the launched processes' group
    world = accelerator.num_processes if accelerator else 1
    # several processes share one teacher: rank 0 writes it to the night's cache, the others read it back
    cache = teacher_cache_dir(ws, night) if params.seed.ks_teacher_cache or world > 1 else None
    teacher_id = json.dumps({k: parent[k] for k in ("base", "adapters", "nights")} |
                            {"dtype": params.prepare_model.dtype}, sort_keys=True)  # names the teacher's weights
    cfg = params.seed
    anchors = read_anchor_prompts(ws.resolve(cfg.ks_anchor_file) if cfg.ks_anchor_file else "",
                                  cfg.ks_anchor_prompts, cfg.seed)
    if cfg.ks_sender == "fast_level" and world > 1:
        raise ValueError("seed.ks_sender 'fast_level' trains in one process: unset seed.accelerate_config")
    drift_text, reading = guard_inputs(ws, params)
    cms, losses, stats = consolidate_by_sender(model, tokenizer, memories, cfg, drift_text=drift_text, reading=reading,
                                               replay=replay, teacher_cache=cache, teacher_id=teacher_id,
                                               anchors=anchors)
    summary = {"night": night, "method": "ks", "sender": cfg.ks_sender, "memories": len(memories),
               "steps": len(losses), "processes": world,
               "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
               "prompts": stats["prompts"], "teacher_samples": stats["teacher_samples"],
               "teacher_cache": stats["teacher_cache"], "seconds": stats["seconds"],
               "ungrounded_dropped": len(stats.get("ungrounded_dropped", [])),  # listed in train_log.json's "ks"
               "drift_guard_scale": stats["drift_guard"]["scale"] if "drift_guard" in stats else None}
    if accelerator is not None and not accelerator.is_main_process:  # every rank holds the same expert
        return summary
    write_jsonl(out_dir / "train_texts.jsonl", stats.pop("train_texts"))
    export_peft_adapter(cms, out_dir / "adapter")
    return _write_outputs(ws, params, parent, losses, summary, extra={"ks": stats})


def _write_outputs(ws, params, parent, losses, summary, extra=None) -> dict[str, Any]:
    night, cfg, out_dir = params.night.id, params.seed, ws.night_model(params.night.id)
    lineage = {
        "base": parent["base"],
        "base_path": parent["base_path"],
        "adapters": parent["adapters"] + [str(Path(out_dir / "adapter").relative_to(ws.root))],
        "nights": parent["nights"] + [night],
        "parent": {k: v for k, v in parent.items() if k != "parent"},
        "method": cfg.method,
    }
    write_json(out_dir / "lineage.json", lineage)
    write_json(out_dir / "train_log.json", {"losses": losses, "config": params.to_dict()["seed"], "summary": summary,
                                            **(extra or {})})
    return summary | {"loss_curve": losses}


def run(params: Params, ws: Workspace) -> dict[str, Any]:
    accepted = ws.night_data(params.night.id) / "accepted.jsonl"
    if not accepted.exists():
        raise NightStopped(f"{accepted} is missing: run collect and validate first")
    memories = read_jsonl(accepted)
    teacher_cache_dir(ws, params.night.id).mkdir(parents=True, exist_ok=True)
    if not memories:
        raise NightStopped(f"{accepted} holds no accepted memories")
    if params.seed.accelerate_config and not inside_launch():
        launch_stage("seed", params, ws, ws.resolve(params.seed.accelerate_config))
        log = read_json(ws.night_model(params.night.id) / "train_log.json")
        return log["summary"] | {"loss_curve": log["losses"]}
    return consolidate(ws, params, memories)
