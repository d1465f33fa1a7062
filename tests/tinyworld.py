"""Test helpers shared by the unit tests: a tiny model workspace and small inbox days (no network, no hub)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lmsleep.config import Params, Workspace, render_params_yaml
from lmsleep.models import build_tiny

# A probe no training text may ever contain (the probe-leak tests look for it in everything trained on).
CANARY_Q, CANARY_A = "ZQXJ-question-canary", "VWKP-answer-canary"

REFERENCE = (
    "A bicycle turns the push of a rider's legs into motion. The pedals turn a chain ring, the chain pulls the rear "
    "sprocket, and the rear wheel rolls forward. Bread needs flour, water, salt and time; the dough rises while yeast "
    "eats sugar and breathes out gas. In autumn the wind comes from the west and the evenings grow short. "
) * 6


def memory(i: int, text: str | None = None, probes: list | None = None, kind: str = "document") -> dict:
    return {
        "id": f"m-{i:03d}",
        "time": "2026-11-26T09:00:00Z",
        "source": "test:tinyworld",
        "kind": kind,
        "text": text or f"Captain Orlane Vesk{i} steers the ferry Quillmoth number {i} across the Dunmere river.",
        "probes": probes if probes is not None else [{"question": f"Who steers ferry number {i}?",
                                                       "answer": f"Orlane Vesk{i}"}],
        "meta": {"lang": "en"},
    }


def write_day(inbox: Path, name: str, records: list[dict], extra_lines: list[bytes] = ()) -> Path:
    inbox.mkdir(parents=True, exist_ok=True)
    payload = b"".join(json.dumps(r).encode() + b"\n" for r in records) + b"".join(x + b"\n" for x in extra_lines)
    path = inbox / name
    path.write_bytes(payload)
    return path


def small_dream(params: Params) -> Params:
    """Dreaming at test size. The tiny model learns nothing, so tau never rises on its own: a margin of -1e9 rewards
    every tested dream, so a tiny night still runs rehearsal and ReST-EM end to end (the reward rule has its own
    tests in test_dream.py)."""
    dream = params.dream
    dream.enabled = True  # off in the shipped params (docs/results.md); the test nights dream to cover the stage
    dream.kinds = ["continuation", "qa"]  # a random tiny model rarely writes a 4-word restatement or a real question
    dream.dreams_per_memory, dream.max_new_tokens, dream.tau_questions, dream.tau_answers = 2, 12, 1, 1
    dream.max_trials, dream.trial_steps, dream.writer_steps, dream.rehearsal_steps = 4, 1, 2, 2
    dream.reward_margin = -1e9
    return params


def tiny_params(night: str = "n1") -> Params:
    params = Params()
    params.night.id = night
    params.prepare_model.name = "tiny"
    params.seed.epochs = 2  # the SFT baseline's knobs, for the tests that set seed.method sft
    params.seed.lr = 5e-3
    # the default consolidator (KS) at test size: one question and one completion per memory, a few steps
    params.seed.ks_steps, params.seed.ks_max_new_tokens, params.seed.ks_lr = 3, 6, 1e-2
    params.seed.ks_prompts_per_memory, params.seed.ks_question_share, params.seed.ks_expert_rank = 2, 0.5, 4
    params.seed.ks_anchor_prompts = 2  # the default's anchors, at test size
    params.evaluate.max_new_tokens = 6
    params.tracking.wandb_mode = "disabled"
    return small_dream(params)


_TINY_CACHE: dict[str, Path] = {}


def tiny_workspace(root: Path, cache_dir: Path | None = None, night: str = "n1") -> tuple[Params, Workspace]:
    """A workspace with params.yaml, the reference text and a built tiny base model (built once per cache dir)."""
    ws = Workspace(root.resolve())
    params = tiny_params(night)
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "reference.txt").write_text(REFERENCE)
    (root / "params.yaml").write_text(render_params_yaml(params))
    key = str(cache_dir)
    if cache_dir is not None and key in _TINY_CACHE:
        shutil.copytree(_TINY_CACHE[key], ws.base_model("tiny"))
    else:
        build_tiny(ws.base_model("tiny"), params.prepare_model, [REFERENCE])
        if cache_dir is not None:
            shutil.copytree(ws.base_model("tiny"), cache_dir / "tiny")
            _TINY_CACHE[key] = cache_dir / "tiny"
    return params, ws


def with_canaries(load):
    """Wrap a benchmark's load so every memory also carries a canary probe that must never reach training."""

    def wrapped(self, limit):
        tasks = load(self, limit)
        for task in tasks:
            task.memories = [m | {"probes": m["probes"] + [{"question": f"{CANARY_Q} {m['id']}?",
                                                            "answer": f"{CANARY_A} {m['id']}"}]}
                             for m in task.memories]
        return tasks

    return wrapped


def gold_reading_targets(model, tokenizer, items: list[dict], max_new_tokens: int = 24) -> list[tuple]:
    """A stand-in for lmsleep.ks.drift_guard.reading_targets (monkeypatched in): every item, with its file answer as
    if the model had said it, all of it scored. The tiny random model reads no text right (its greedy answers decode to nothing), so
    the real function would keep no item; tests/test_ks_drift_guard.py tests that function on its own."""
    from lmsleep.prompts import question_messages

    out = []
    for item in items:
        prompt = tokenizer.apply_chat_template(question_messages(item["question"], item["text"]), tokenize=False,
                                               add_generation_prompt=True)
        answer = tokenizer(item["answer"], add_special_tokens=False)["input_ids"]
        out.append((tokenizer(prompt, add_special_tokens=False)["input_ids"], answer, 0, len(answer)))
    return out
