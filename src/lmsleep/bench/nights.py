"""Thirty nights (issue 5): a tiny model, pretrained here on a synthetic world, sleeps on new facts night after night.

    lmsleep bench nights --seeds 3                          # make bench-nights -> bench/results/nights.json
    lmsleep bench nights --seeds 1 --limit 3                # 3 nights of 3 memories: a quick look
    lmsleep bench nights --seeds 1 --option nights=10 --option pretrain_steps=1500

The world (lmsleep.bench.world): made-up people ("Velmor Quist lives in Anbrel.") and their facts. A tiny Llama of the
project's `tiny` family (lmsleep.models.build_tiny: byte-level BPE, ChatML template, so generation, grading and
Knowledge Seeding run unchanged) is pretrained on the PRETRAINING part of the world: documents, closed-book questions,
in-context reading in the evaluate stage's exact chat format, and what Knowledge Seeding asks of a model (write a
question about a sentence, complete a sentence, fill a blank). It is built once per settings and cached in
models/bench/world-<hash>/ (pretrain.json beside the weights holds the settings, the loss curve, the wall time and the
in-context accuracy on night probes); `base_model` returns it. The perplexity reference is world text held out from
training (the reference people's documents).

Then `nights` nights (default 30), each with `facts_per_night` NEW facts (default 8) about new people, as memories
(`facts_per_memory` facts each) whose probes are held out. The benchmark is sequential: the model is carried from
night to night and after every night answers every night's probes, which fills R[i][j] = accuracy on night j's probes
after night i (rows: after night i; columns: night j; upper triangle: nights not seen yet). ACC/BWT/FWT/forgetting and
perplexity drift follow (lmsleep.bench.metrics). `--limit K` keeps the first K nights, at most K memories each.

Headline: per method ACC, BWT, FWT and forgetting with their 95% intervals over seeds, final accuracy on the first and
last night, the perplexity drift; icl is the ceiling while the memory is in context, base the floor.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lmsleep.bench.harness import Benchmark, Task
from lmsleep.bench.world import World
from lmsleep.config import Params, PrepareModelConfig, Workspace
from lmsleep.memory import atomic_write_bytes, probes_of, read_json, write_json

PRETRAIN_VERSION = 6  # bump when the corpus or the training loop changes: a new hash, a new cached model
# Measured (pretrain.json): a 2-layer model learns to read in context in a phase change around step 2000 (in-context
# accuracy on night probes 9% at step 1500, 41% at 2000, 78% at 2500); wider/deeper models at the same wall time get
# fewer steps and had not reached it (128x4 after 2400 steps: 9%).
DEFAULT_PRETRAIN = {"hidden": 96, "layers": 2, "heads": 4, "vocab": 2048, "steps": 5000, "batch": 16, "lr": 3e-3,
                    "warmup": 80, "people": 200, "max_tokens": 320, "watch_every": 500}


class NightsBenchmark(Benchmark):
    name = "nights"
    sequential = True
    default_methods = ("base", "icl", "sft", "sft_replay", "sleep_ks")

    def __init__(self, nights: int = 30, facts_per_night: int = 8, facts_per_memory: int = 2, world_seed: int = 0,
                 pretrain_steps: int = DEFAULT_PRETRAIN["steps"], pretrain_hidden: int = DEFAULT_PRETRAIN["hidden"],
                 pretrain_layers: int = DEFAULT_PRETRAIN["layers"], pretrain_heads: int = DEFAULT_PRETRAIN["heads"],
                 pretrain_vocab: int = DEFAULT_PRETRAIN["vocab"], pretrain_batch: int = DEFAULT_PRETRAIN["batch"],
                 pretrain_lr: float = DEFAULT_PRETRAIN["lr"], pretrain_people: int = DEFAULT_PRETRAIN["people"]):
        """Options (`--option key=value`): the world (nights, facts_per_night, facts_per_memory, world_seed) and the
        pretraining (pretrain_*: steps, model size, batch, learning rate, pretraining people)."""
        self.nights, self.facts_per_night, self.facts_per_memory = int(nights), int(facts_per_night), int(
            facts_per_memory)
        self.world_seed = int(world_seed)
        self.pretrain_steps, self.pretrain_hidden, self.pretrain_layers = int(pretrain_steps), int(
            pretrain_hidden), int(pretrain_layers)
        self.pretrain_heads, self.pretrain_vocab, self.pretrain_batch = int(pretrain_heads), int(pretrain_vocab), int(
            pretrain_batch)
        self.pretrain_lr, self.pretrain_people = float(pretrain_lr), int(pretrain_people)
        if self.pretrain_steps < 1 or self.pretrain_hidden % self.pretrain_heads:
            raise ValueError("nights: pretrain_steps must be >= 1 and pretrain_hidden a multiple of pretrain_heads")
        self.world()  # fail early on bad world options

    def world(self) -> World:
        return World(seed=self.world_seed, nights=self.nights, facts_per_night=self.facts_per_night,
                     facts_per_memory=self.facts_per_memory, people=self.pretrain_people)

    def pretrain_settings(self) -> dict[str, Any]:
        return {**DEFAULT_PRETRAIN, "hidden": self.pretrain_hidden, "layers": self.pretrain_layers,
                "heads": self.pretrain_heads, "vocab": self.pretrain_vocab, "steps": self.pretrain_steps,
                "batch": self.pretrain_batch, "lr": self.pretrain_lr, "people": self.pretrain_people,
                "world_seed": self.world_seed, "nights": self.nights, "facts_per_night": self.facts_per_night,
                "facts_per_memory": self.facts_per_memory, "version": PRETRAIN_VERSION}

    # ------------------------------------------------------------ the Benchmark interface

    def load(self, limit: int | None) -> list[Task]:
        nights = self.world().nights
        if limit:
            nights = [night[:limit] for night in nights[:limit]]
        return [Task(f"night{i:02d}", "nights", memories) for i, memories in enumerate(nights)]

    def base_model(self, ws: Workspace, params: Params) -> Path:
        return ensure_world_model(ws, self.pretrain_settings(), params.prepare_model.dtype)

    def reference_text(self, ws: Workspace, params: Params) -> str:
        return self.world().reference_text

    def drift_text_file(self, ws: Workspace, params: Params) -> Path:
        return self.base_model(ws, params) / DRIFT_TEXT  # written beside the world model (ensure_world_model)

    def reading_guard_file(self, ws: Workspace, params: Params) -> Path:
        return self.base_model(ws, params) / READING_GUARD  # the same

    def headline(self, result: dict[str, Any]) -> dict[str, Any]:
        retention = result.get("retention") or {"methods": {}, "tasks": []}
        out: dict[str, Any] = {"nights": len(retention["tasks"]), "probes": sum(t["probes"] for t in result["tasks"]),
                               "methods": {}}
        for method, r in retention["methods"].items():
            R = r["R_mean"]
            out["methods"][method] = {
                **{key: {k: r[key][k] for k in ("mean", "ci95", "ci_method", "per_seed")}
                   for key in ("acc", "bwt", "fwt", "forgetting", "perplexity_drift")},
                "final_first_night": R[-1][0] if R else None, "final_last_night": R[-1][-1] if R else None,
                "diagonal_mean": sum(R[i][i] for i in range(len(R))) / len(R) if R else None,
                "reads_next": _reading_summary(result.get("steps", []), method)}
        return out

    def headline_markdown(self, headline: dict[str, Any]) -> list[str]:
        def stat(s, pct=True):
            if not s or s["mean"] is None:
                return "n/a"
            f = (lambda v: f"{v:.1%}") if pct else (lambda v: f"{v:+.3f}")
            return f(s["mean"]) + (f" [{f(s['ci95'][0])}, {f(s['ci95'][1])}]" if s["ci95"] else "")

        lines = [f"## Issue 5: {headline['nights']} nights in sequence ({headline['probes']} probes; 95% intervals)",
                 "", "| method | ACC | BWT | FWT | forgetting | R[last][first] | mean R[i][i] | perplexity drift "
                     "| reads the next night in context (mean; after the first night → after the last) |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for method, m in headline["methods"].items():
            first = "n/a" if m["final_first_night"] is None else f"{m['final_first_night']:.1%}"
            diag = "n/a" if m["diagonal_mean"] is None else f"{m['diagonal_mean']:.1%}"
            reads = m.get("reads_next")
            read = "n/a" if not reads else (f"{reads['mean']:.0%} ({reads['after_first_night']:.0%} → "
                                            f"{reads['after_last_scored_night']:.0%})")
            lines.append(f"| {method} | {stat(m['acc'])} | {stat(m['bwt'])} | {stat(m['fwt'])} "
                         f"| {stat(m['forgetting'])} | {first} | {diag} | {stat(m['perplexity_drift'])} | {read} |")
        return lines + ["", "R[i][j] = accuracy on night j's probes after night i (no context; icl: in context once "
                            "seen). ACC = mean of the last row; BWT < 0 and forgetting > 0 mean earlier nights fade. "
                            "'Reads the next night': the carried model's accuracy on night i+1's probes with their "
                            "memory in context, after night i: what the next night's teacher can read (trained "
                            "methods only)."]


def _reading_summary(steps: list[dict[str, Any]], method: str) -> dict[str, Any] | None:
    """The carried model's in-context accuracy on the next night's probes (the harness's next_in_context_accuracy),
    mean over nights and seeds, first and last night: what each night's teacher could still read."""
    reads = [s for s in steps if s["method"] == method and s.get("next_in_context_accuracy") is not None]
    if not reads:
        return None
    by_step = {}
    for s in reads:
        by_step.setdefault(s["step"], []).append(s["next_in_context_accuracy"])
    first, last = min(by_step), max(by_step)
    return {"mean": sum(s["next_in_context_accuracy"] for s in reads) / len(reads),
            "after_first_night": sum(by_step[first]) / len(by_step[first]),
            "after_last_scored_night": sum(by_step[last]) / len(by_step[last])}


# ---------------------------------------------------------------- pretraining the world model


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def world_model_dir(ws: Workspace, settings: dict[str, Any]) -> Path:
    return ws.root / "models" / "bench" / f"world-{settings_hash(settings)}"


READING_ANCHORS = "reading_anchors.txt"  # beside the world model: --set seed.ks_anchor_file=<it>
DRIFT_TEXT = "drift_text.txt"  # beside the world model: the guard's text when seed.ks_drift_budget > 0 (harness)
READING_GUARD = "reading_guard.jsonl"  # beside it too: the guard's reading items when seed.ks_reading_budget > 0


def ensure_world_model(ws: Workspace, settings: dict[str, Any], dtype: str = "float32") -> Path:
    """The pretrained world model for `settings`: built once (models/bench/world-<hash>/), then found; its reading
    anchors (READING_ANCHORS: 256 in-context reading prompts about throw-away people) and the drift guard's text
    (DRIFT_TEXT: documents about 24 more of them) are written beside it."""
    dest = world_model_dir(ws, settings)
    if not ((dest / "config.json").exists() and (dest / "pretrain.json").exists()):
        pretrain_world_model(dest, settings, dtype)
    anchors = dest / READING_ANCHORS
    if not anchors.exists():
        lines = [a.replace("\n", "\\n") for a in world_of(settings).reading_anchors(256)]
        atomic_write_bytes(anchors, ("# in-context reading anchors for seed.ks_anchor_file (lmsleep.bench.world."
                                     "reading_anchors)\n" + "\n".join(lines) + "\n").encode("utf-8"))
    drift = dest / DRIFT_TEXT
    if not drift.exists():
        atomic_write_bytes(drift, ("# the drift guard's world text for seed.ks_drift_text (lmsleep.bench.world."
                                   "drift_text)\n" + world_of(settings).drift_text() + "\n").encode("utf-8"))
    reading = dest / READING_GUARD
    if not reading.exists():
        atomic_write_bytes(reading, "".join(json.dumps(item) + "\n" for item in world_of(settings).reading_guard())
                           .encode("utf-8"))
    return dest


def world_of(settings: dict[str, Any]) -> World:
    return World(seed=settings["world_seed"], nights=settings["nights"], facts_per_night=settings["facts_per_night"],
                 facts_per_memory=settings["facts_per_memory"], people=settings["people"])


def pretraining_corpus(settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Every example the world model is pretrained on (steps x batch), in training order."""
    return world_of(settings).pretraining_examples(settings["steps"] * settings["batch"], seed=settings["world_seed"])


def rendered(example: dict[str, Any]) -> str:
    """An example as one string (the chat template applied to chat turns): for the tokenizer and for leak audits."""
    if example["prompt"] is None:
        return example["text"]
    prompt = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in example["prompt"])
    return f"{prompt}<|im_start|>assistant\n {example['text'].strip()}<|im_end|>\n"


def _encode(example: dict[str, Any], tokenizer, max_tokens: int, full: bool) -> tuple[list[int], list[int]]:
    """(input ids, labels): a document is trained on every token; a chat turn on its reply, and on its prompt too
    when `full` (a quarter of them: the names a question repeats from its text are more practice at looking back)."""
    from lmsleep.ks.samples import encode

    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if example["prompt"] is None:
        ids = tokenizer(example["text"], add_special_tokens=False)["input_ids"] + [end]
        return ids[:max_tokens], ids[:max_tokens]
    # A reply starts with a space: the byte-level BPE then writes a word as the same tokens as in the text ("ĠVest"),
    # so answering is copying those tokens (without it, "Vesttond" at the start of a reply is other tokens entirely,
    # and a tiny model does not learn to read). generate_answers strips the space.
    reply = tokenizer(" " + example["text"].strip(), add_special_tokens=False)["input_ids"] + [end]
    prompt = encode(tokenizer, example["prompt"])
    labels = (prompt if full else [-100] * len(prompt)) + reply
    return (prompt + reply)[-max_tokens:], labels[-max_tokens:]  # a long prompt loses its start, never the reply


def pretrain_world_model(dest: Path, settings: dict[str, Any], dtype: str = "float32") -> dict[str, Any]:
    """Build the tokenizer and a tiny Llama (lmsleep.models.build_tiny), pretrain it on the world, measure its
    in-context accuracy on the nights' probes, save it to `dest` with pretrain.json."""
    from lmsleep.models import _save_atomically, build_tiny, load_base

    started = time.perf_counter()
    world = world_of(settings)
    corpus = pretraining_corpus(settings)
    tok_texts = [rendered(e) for e in corpus[:4000]] + [world.text(p, random.Random(0)) for p in world.people]
    cfg = PrepareModelConfig(name="tiny", dtype=dtype, tiny_hidden_size=settings["hidden"],
                             tiny_layers=settings["layers"], tiny_heads=settings["heads"],
                             tiny_vocab_size=settings["vocab"], tiny_max_positions=1024, seed=settings["world_seed"])
    print(f"nights: pretraining the world model -> {dest} ({settings['steps']} steps x {settings['batch']}, hidden "
          f"{settings['hidden']}, {settings['layers']} layers)")
    with tempfile.TemporaryDirectory(prefix="lmsleep-world-") as tmp:
        build_tiny(Path(tmp) / "init", cfg, tok_texts)
        model, tokenizer = load_base(Path(tmp) / "init", dtype)
    full = random.Random(f"full-{settings['world_seed']}")
    encoded = [_encode(e, tokenizer, settings["max_tokens"], e["kind"] == "repeat" or full.random() < 0.25)
               for e in corpus]
    watched: list[dict[str, Any]] = []

    def watch(m):
        return {"in_context": in_context_accuracy(m, tokenizer, world, nights=4, closed_book=False)[
            "in_context_accuracy"]}

    losses = _train(model, tokenizer, encoded, settings, watch, watched)
    model.eval()
    train_seconds = round(time.perf_counter() - started, 1)
    accuracy = in_context_accuracy(model, tokenizer, world)
    info = {"settings": settings, "hash": settings_hash(settings), "train_seconds": train_seconds,
            "threads": torch.get_num_threads(), "parameters": sum(p.numel() for p in model.parameters()),
            "examples": len(corpus), "tokens": sum(len(ids) for ids, _ in encoded),
            "loss_first": losses[0], "loss_last": sum(losses[-20:]) / len(losses[-20:]),
            "losses_every_50": losses[::50], "in_context_curve": watched, **accuracy}
    print(f"nights: pretrained in {train_seconds} s, loss {info['loss_first']:.2f} -> {info['loss_last']:.2f}; "
          f"night probes in context {accuracy['in_context_accuracy']:.1%}, closed book "
          f"{accuracy['closed_book_accuracy']:.1%} ({accuracy['probes']} probes)")
    _save_atomically(dest, model, tokenizer)
    write_json(dest / "pretrain.json", info)
    return info


def _batches(encoded: list[tuple[list[int], list[int]]], batch: int, rng: random.Random):
    """Batches of similar length (little padding): examples sorted by length within windows of 32 batches."""
    out = []
    for start in range(0, len(encoded), batch * 32):
        window = sorted(encoded[start:start + batch * 32], key=lambda e: len(e[0]))
        out += [window[i:i + batch] for i in range(0, len(window), batch)]
    rng.shuffle(out)
    return out


def _train(model, tokenizer, encoded, settings: dict[str, Any], watch=None, watched: list | None = None) -> list[float]:
    """AdamW with warmup and cosine decay to 10%; `watch(model)` -> dict is logged into `watched` every watch_every
    steps (the in-context accuracy on a few night probes: the learning curve of reading)."""
    torch.manual_seed(settings["world_seed"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"], betas=(0.9, 0.98), weight_decay=0.01)
    steps, warmup = settings["steps"], settings["warmup"]
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    pad = tokenizer.pad_token_id
    model.train()
    losses = []
    started = time.perf_counter()
    for step, rows in enumerate(_batches(encoded, settings["batch"], random.Random(settings["world_seed"]))):
        width = max(len(ids) for ids, _ in rows)
        ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in rows])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in rows])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            print(f"nights: pretrain step {step}/{steps} loss {sum(losses[-100:]) / len(losses[-100:]):.3f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
        if watch is not None and (step + 1) % settings["watch_every"] == 0:
            model.eval()
            watched.append({"step": step + 1, **watch(model)})
            print(f"nights: step {step + 1}: {watched[-1]}", flush=True)
            model.train()
    return losses


def in_context_accuracy(model, tokenizer, world: World, nights: int = 10, max_new_tokens: int = 16,
                        closed_book: bool = True) -> dict[str, Any]:
    """Accuracy on the first `nights` nights' probes with the memory in context (what icl gets; the benchmark is
    meaningless if this is low) and without it (what base gets: chance)."""
    from lmsleep.generation import generate_answers
    from lmsleep.grading import grade
    from lmsleep.prompts import question_messages

    rows = [(m["text"], p) for night in world.nights[:nights] for m in night for p in probes_of(m)]
    out: dict[str, Any] = {"probes": len(rows)}
    for key, with_context in (("in_context_accuracy", True), ("closed_book_accuracy", False))[:2 if closed_book else 1]:
        chats = [question_messages(p["question"], text if with_context else None) for text, p in rows]
        answers = generate_answers(model, tokenizer, chats, max_new_tokens, 16, desc=key)
        out[key] = sum(grade(a, p["answer"], 0.5)["correct"] for a, (_, p) in zip(answers, rows)) / len(rows)
        out[f"{key}_examples"] = [{"question": p["question"], "answer": p["answer"], "prediction": a}
                                  for a, (_, p) in list(zip(answers, rows))[:6]]
    return out


def pretrain_info(path: Path) -> dict[str, Any]:
    return read_json(path / "pretrain.json")


BENCHMARK = NightsBenchmark()
