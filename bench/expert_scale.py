"""How recall and drift move when a trained night's expert is scaled down (the drift guard's premise).

    OMP_NUM_THREADS=1 python bench/expert_scale.py --seed 1 --set ks_lr=0.003 --scales 1,0.85,0.7 --out /tmp/s1.json

Trains one demo night with KS in memory (seed params as shipped, plus --set; the teacher side cached in
--cache-dir/seed<N>/ so reruns of a seed skip it), then for each scale s sets every expert B to s x its trained value
and measures the no-context probes (graded as the evaluate stage grades), the reference text's perplexity rise (the
promotion gate's measure) and the bundled drift text's (seed.ks_drift_text, lmsleep.ks.drift_guard). `--gated` gives
the expert a learned sigmoid gate per layer (the CMS top-k router with one expert) and reports the mean gate on the
reference text and on the probes. Prints one line per scale and writes everything to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from lmsleep.cms.experts import decoder_layers  # noqa: E402
from lmsleep.config import load_params  # noqa: E402
from lmsleep.generation import generate_answers, perplexity  # noqa: E402
from lmsleep.grading import grade  # noqa: E402
from lmsleep.ks.consolidate import LEVEL, consolidate_memories  # noqa: E402
from lmsleep.ks.drift_guard import DRIFT_TOKENS, read_drift_text  # noqa: E402
from lmsleep.ks.samples import read_anchor_prompts  # noqa: E402
from lmsleep.memory import read_jsonl  # noqa: E402
from lmsleep.models import load_base  # noqa: E402
from lmsleep.prompts import question_messages  # noqa: E402
from seed_vs_trl import SMOLLM2, build_tiny_model  # noqa: E402


def mean_gates(cms, tokenizer, index: int, texts: list[str]) -> dict[str, float]:
    """Mean sigmoid gate of the expert per covered layer over `texts` (the --gated trial's question: does the gate
    tell tonight's topics from general text?)."""
    seen: dict[str, list[float]] = {}
    hooks = []
    layers = decoder_layers(cms.base)
    for name, router in cms.level(LEVEL).routers.items():
        def hook(module, args, kwargs, router=router, name=name):
            hidden = args[0] if args else next(iter(kwargs.values()))
            gate = torch.sigmoid(torch.nn.functional.linear(hidden, router.gate_w[index][None], router.gate_b[index]))
            seen.setdefault(name, []).append(float(gate.mean()))
        hooks.append(layers[int(name.removeprefix("layer"))].mlp.register_forward_pre_hook(hook, with_kwargs=True))
    with torch.no_grad():
        for text in texts:
            cms.base(tokenizer(text, return_tensors="pt").input_ids[:, :512])
    for h in hooks:
        h.remove()
    return {k: round(sum(v) / len(v), 3) for k, v in seen.items()}


def main(argv: list[str] | None = None) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        return run(argv, Path(tmp))


def run(argv: list[str] | None, tmp: Path) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], help="a seed field: key=JSON value (e.g. ks_lr=0.003)")
    p.add_argument("--scales", default="1.0,0.85,0.7,0.55")
    p.add_argument("--gated", action="store_true", help="a learned sigmoid gate per layer (top-k router, one expert)")
    p.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2", help="tiny: a smoke run in seconds")
    p.add_argument("--cache-dir", type=Path, default=Path("/tmp/lmsleep-expert-scale"))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    params = load_params(REPO / "params.yaml")
    overrides = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    cfg = dataclasses.replace(params.seed, seed=args.seed, ks_activation_checkpointing=False,
                              ks_return_freed_memory_kb=0, **overrides)  # bench quality's --memory fast
    ev = params.evaluate
    model_path = SMOLLM2 if args.model == "smollm2" else build_tiny_model(tmp / "tiny")
    model, tokenizer = load_base(model_path)
    memories = read_jsonl(REPO / "data" / "demo" / "day1.jsonl")
    texts = {"reference": (REPO / "data" / "reference.txt").read_text(encoding="utf-8"),
             "drift_text": read_drift_text("")}
    tokens = {"reference": ev.max_reference_tokens, "drift_text": DRIFT_TOKENS}
    before = {k: perplexity(model, tokenizer, t, tokens[k]) for k, t in texts.items()}
    started = time.time()
    cache = args.cache_dir / f"{args.model}-seed{args.seed}"
    cache.mkdir(parents=True, exist_ok=True)
    anchors = read_anchor_prompts("", cfg.ks_anchor_prompts, cfg.seed)
    cms, losses, _ = consolidate_memories(model, tokenizer, memories, cfg,
                                          teacher_cache=cache / "teacher.safetensors", teacher_id=str(model_path),
                                          anchors=anchors, router="topk" if args.gated else "dense")
    index = cms.active_experts(LEVEL)[0]
    train_s = time.time() - started
    rows = [(p["question"], p["answer"]) for m in memories for p in m.get("probes", [])]
    messages = [question_messages(q) for q, _ in rows]
    pools = list(cms.level(LEVEL).pools.values())
    trained = [pool.B[index].detach().clone() for pool in pools]
    by_scale = {}
    for scale in (float(s) for s in args.scales.split(",")):
        with torch.no_grad():
            for pool, b in zip(pools, trained):
                pool.B[index].copy_(b * scale)
        answers = generate_answers(model, tokenizer, messages, ev.max_new_tokens, ev.batch_size)
        correct = sum(bool(grade(a, ref, ev.f1_threshold)["correct"]) for a, (_, ref) in zip(answers, rows))
        rise = {k: perplexity(model, tokenizer, t, tokens[k]) / before[k] - 1.0 for k, t in texts.items()}
        by_scale[scale] = {"correct": correct, "probes": len(rows), **{f"{k}_rise": round(v, 4) for k, v in rise.items()},
                           "answers": answers}
        print(f"seed {args.seed} {overrides} scale {scale}: {correct} of {len(rows)}, reference "
              f"{rise['reference']:+.1%}, drift text {rise['drift_text']:+.1%}", flush=True)
    result = {"model": args.model, "seed": args.seed, "set": overrides, "gated": args.gated, "train_s": round(train_s, 1),
              "loss_last": losses[-1], "perplexity_before": before, "by_scale": by_scale}
    if args.gated:
        result["mean_gate"] = {"reference": mean_gates(cms, tokenizer, index, [texts["reference"]]),
                               "probes": mean_gates(cms, tokenizer, index, [tokenizer.apply_chat_template(
                                   m, tokenize=False, add_generation_prompt=True) for m in messages])}
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
