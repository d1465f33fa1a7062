"""One KS night with the product's memory-first knobs (lean) and with the benchmarks' `--memory fast`, side by side.

    OMP_NUM_THREADS=1 python bench/memory_mode.py --model smollm2 --steps 16    # SEAL's first SQuAD passage, minutes
    python bench/memory_mode.py --model tiny --source demo --steps 4            # seconds

`lmsleep bench` runs its KS nights with `--memory fast` by default (lmsleep.bench.harness.FAST_MEMORY): no activation
checkpointing (seed.ks_activation_checkpointing=false) and glibc's malloc left as it is
(seed.ks_return_freed_memory_kb=0); a night in production keeps params.yaml's values (on, 256 KB), which hold issue
3's peak-memory target. This script measures what the benchmarks' choice buys and costs: the same
`consolidate_memories` call (params.yaml's seed section, `--steps` steps, the bundled anchors as the benchmarks pass
them, no teacher cache) in one fresh process per mode, modes alternating, `--reps` times. Reported per run: set-up
seconds (the model writing its prompts and the teacher's answers), loop seconds per step, peak RSS, and the losses
and a hash of the trained expert, which must be the same in both modes (the knobs change memory, not numbers).
Writes bench/results/memory_mode.json; the ratios are lean / fast of the summed times and of the peaks.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_vs_trl import (OFFLINE, PROJECT, SMOLLM2, build_tiny_model, load_memories,  # noqa: E402
                         mark_loop_start, peak_rss_mb)

DEFAULT_OUT = PROJECT / "bench" / "results" / "memory_mode.json"


def night_memories(source: str) -> list[dict[str, Any]]:
    if source == "demo":
        return load_memories(1)
    from lmsleep.bench.squad import squad_memories

    return squad_memories(1)


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One mode's night in this process (the malloc setting and the peak are per process)."""
    import lmsleep.ks.consolidate as ks
    from lmsleep.bench.harness import FAST_MEMORY
    from lmsleep.config import load_params
    from lmsleep.ks.samples import read_anchor_prompts
    from lmsleep.models import load_base

    knobs = FAST_MEMORY if args.child == "fast" else {}  # lean: params.yaml's own values
    seed_params = load_params(PROJECT / "params.yaml").seed
    cfg = dataclasses.replace(seed_params, ks_steps=args.steps, ks_teacher_cache=False, **knobs)
    model, tokenizer = load_base(Path(args.model_path))
    loaded_rss = peak_rss_mb()
    marks = mark_loop_start(ks)
    anchors = read_anchor_prompts(cfg.ks_anchor_file, cfg.ks_anchor_prompts, cfg.seed)
    started = time.perf_counter()
    cms, losses, stats = ks.consolidate_memories(model, tokenizer, night_memories(args.source), cfg, anchors=anchors)
    ended = time.perf_counter()
    digest = hashlib.sha256()
    for p in cms.expert_parameters(ks.LEVEL, stats["expert_index"]):
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    loop = ended - marks["loop_start"]
    return {"mode": args.child, **{k: getattr(cfg, k) for k in FAST_MEMORY},
            "setup_s": round(marks["loop_start"] - started, 2), "loop_s": round(loop, 2),
            "s_per_step": round(loop / len(losses), 3), "steps": len(losses), "prompts": stats["prompts"],
            "peak_rss_mb": peak_rss_mb(), "rss_after_load_mb": loaded_rss, "losses": losses,
            "expert_sha256": digest.hexdigest()}


def run_child(mode: str, model_path: Path, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    out = tmp / f"{mode}.json"
    cmd = [sys.executable, __file__, "--child", mode, "--model-path", str(model_path), "--steps", str(args.steps),
           "--source", args.source, "--child-out", str(out)]
    env = {**os.environ, **OFFLINE}
    subprocess.run(cmd, check=True, env=env, cwd=PROJECT)
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2", help="tiny | smollm2 | a local HF checkpoint folder")
    p.add_argument("--steps", type=int, default=16, help="KS steps per night")
    p.add_argument("--reps", type=int, default=1, help="repetitions of the (lean, fast) pair")
    p.add_argument("--source", choices=("squad", "demo"), default="squad",
                   help="the night's memory: SEAL's first SQuAD passage (../shared/data) or the first demo memory")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--child", choices=("lean", "fast"), help=argparse.SUPPRESS)
    p.add_argument("--model-path", help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.child_out.write_text(json.dumps(child(args)), encoding="utf-8")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        path = {"smollm2": SMOLLM2, "tiny": None}.get(args.model, Path(args.model))
        path = path or build_tiny_model(tmp_path / "tiny")
        runs: dict[str, list[dict[str, Any]]] = {"lean": [], "fast": []}
        for _ in range(args.reps):
            for mode in runs:
                runs[mode].append(run_child(mode, path, args, tmp_path))
                row = runs[mode][-1]
                print(f"{mode}: setup {row['setup_s']} s, {row['s_per_step']} s/step, peak {row['peak_rss_mb']} MB",
                      flush=True)
    lean, fast = runs["lean"], runs["fast"]
    same = all(r["losses"] == lean[0]["losses"] and r["expert_sha256"] == lean[0]["expert_sha256"]
               for r in lean + fast)
    ratio = {key: round(sum(r[key] for r in lean) / sum(r[key] for r in fast), 3)
             for key in ("setup_s", "loop_s", "peak_rss_mb")}
    result = {"model": args.model, "source": args.source, "steps": args.steps, "runs": runs,
              "same_losses_and_expert": same, "lean_vs_fast": ratio,
              "torch_threads": os.environ.get("OMP_NUM_THREADS", "default"),
              "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"lean / fast: {ratio}; same losses and expert: {same}; wrote {args.out}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
