"""A KS night's teacher side with and without generation after each memory's shared prefix, back to back.

    python bench/teacher_prefix.py --model smollm2 --passages 5      # SEAL SQuAD passages, minutes per run
    python bench/teacher_prefix.py --model tiny --memories demo       # seconds

What runs, each mode in its OWN process (so each peak RSS is that mode's alone), on the same memories:
`lmsleep.ks.consolidate._prepare_samples` with the seed params' defaults and lambda 0, i.e. everything the teacher
does for a night before the first step: the model writes its questions about each sentence (memory in context,
3 tries each), writes its completions y of every prompt (memory in context), and scores y (log-probs, top-k).
- `shared` (as shipped): `sample_completions(groups=...)` runs each memory's prefix (chat header + memory text)
  through the model once per group and generates every sequence of that memory after its keys and values.
- `plain` (the baseline): the same code with that sharing off (`rollout.MIN_SHARED_PREFIX` above any prompt's
  length), so every sequence prefills its whole memory again, as before 2026-11-27.
Scoring uses the teacher's cached memory prefix in both modes (`teacher.memory_prefixes`, the older part).

Reported per mode: wall seconds, peak RSS (ru_maxrss), `model_tokens` (token positions that went through the model's
embedding layer: prefills plus one per decode step and sequence, a measure of work that a loaded box does not
change), the samples built, and the shared / plain ratios. Writes bench/results/teacher_prefix.json.
Sampled questions depend on how sequences are batched, so the two modes' samples differ a little (counts reported).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_vs_trl import OFFLINE, PROJECT, SMOLLM2, build_tiny_model, peak_rss_mb, run_child_process  # noqa: E402

DEFAULT_OUT = PROJECT / "bench" / "results" / "teacher_prefix.json"
MODES = ("shared", "plain")


def load_memories(source: str, passages: int) -> list[dict[str, Any]]:
    from lmsleep.memory import read_jsonl

    if source == "demo":
        return read_jsonl(PROJECT / "data" / "demo" / "day1.jsonl")[:passages]
    from lmsleep.bench.squad import squad_memories

    return squad_memories(passages)


def child(args: argparse.Namespace) -> dict[str, Any]:
    import dataclasses

    import torch

    import lmsleep.ks.consolidate as ks
    from lmsleep.cms import CMSConfig, LevelSpec, wrap_model
    from lmsleep.config import SeedConfig
    from lmsleep.ks import rollout
    from lmsleep.models import load_base

    if args.child == "plain":
        rollout.MIN_SHARED_PREFIX = 10**9  # no group ever shares a prefix: the pre-2026-11-27 generation
    model, tokenizer = load_base(Path(args.model_path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    cfg = dataclasses.replace(SeedConfig(method="ks"), ks_lambda=0.0, seed=args.seed)
    cms = wrap_model(model.eval(), CMSConfig(levels=[LevelSpec(name=ks.LEVEL, pool_size=1, rank=cfg.ks_expert_rank,
                                                               alpha=2.0 * cfg.ks_expert_rank)]))
    index = cms.activate_expert(ks.LEVEL, torch.Generator().manual_seed(cfg.seed))
    tokens = [0]
    model.get_input_embeddings().register_forward_pre_hook(lambda module, inputs: tokens.__setitem__(
        0, tokens[0] + inputs[0].numel()))
    memories = load_memories(args.memories, args.passages)
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    samples, _, scored, _, _ = ks._prepare_samples(cms, tokenizer, memories, cfg, ks.LEVEL, index, None, None, None, "")
    wall = time.perf_counter() - started
    return {"wall_s": round(wall, 2), "peak_rss_mb": peak_rss_mb(), "model_tokens": tokens[0],
            "samples": len(samples), "questions": sum(s.kind == "question" for s in samples), "scored": scored,
            "completion_tokens": sum(len(s.completion) for s in samples), "memories": len(memories)}


def run_child(mode: str, args: argparse.Namespace, model_path: Path) -> dict[str, Any]:
    return run_child_process(Path(__file__), mode, ["--model-path", str(model_path), "--memories", args.memories,
                                                    "--passages", str(args.passages), "--seed", str(args.seed)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", help="tiny | smollm2 | a local HF checkpoint folder")
    p.add_argument("--memories", choices=("squad", "demo"), default="squad",
                   help="SEAL SQuAD passages (../shared/data) or the bundled demo day")
    p.add_argument("--passages", type=int, default=5, help="how many memories")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results; other models' entries are kept")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("--model-path", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.update(OFFLINE)
    if args.child:
        Path(args.child_out).write_text(json.dumps(child(args)), encoding="utf-8")
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        model_path = {"tiny": lambda: build_tiny_model(Path(tmp) / "tiny"), "smollm2": lambda: SMOLLM2}.get(
            args.model, lambda: Path(args.model))()
        if not (model_path / "config.json").exists():
            raise SystemExit(f"no model at {model_path} (smollm2: run `make sleep` or `lmsleep demo` once to build it)")
        runs = {mode: run_child(mode, args, model_path) for mode in MODES}
    shared, plain = runs["shared"], runs["plain"]
    entry = {**{f"{mode}_{k}": v for mode, r in runs.items() for k, v in r.items()},
             "speedup": round(plain["wall_s"] / shared["wall_s"], 3) if shared["wall_s"] else None,
             "model_tokens_ratio": round(shared["model_tokens"] / plain["model_tokens"], 3),
             "peak_rss_ratio": round(shared["peak_rss_mb"] / plain["peak_rss_mb"], 3),
             "settings": {"model": args.model, "memories": args.memories, "passages": args.passages,
                          "seed": args.seed, "lambda": 0.0, "seed_params": "SeedConfig defaults",
                          "torch_threads": int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)),
                          "load_average_at_end": round(os.getloadavg()[0], 2)}}
    results = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {}
    results.setdefault("runs", {})[f"{args.model}-{args.memories}{args.passages}"] = entry
    results["host"] = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"{'mode':<8}{'wall s':>9}{'peak RSS MB':>13}{'model tokens':>14}{'samples':>9}")
    for mode, r in runs.items():
        print(f"{mode:<8}{r['wall_s']:>9.1f}{r['peak_rss_mb']:>13.0f}{r['model_tokens']:>14}{r['samples']:>9}")
    print(f"speedup {entry['speedup']}x, model tokens {entry['model_tokens_ratio']}x, peak RSS "
          f"{entry['peak_rss_ratio']}x; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
