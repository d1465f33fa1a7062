"""A night's question writing with and without stopping each row at its first '?', alternating in one process.

    python bench/question_stop.py --model smollm2 --reps 2      # the demo night's 12 memories, minutes per run
    python bench/question_stop.py --model tiny --reps 1         # seconds

`lmsleep.ks.samples.build_samples` with the seed params' defaults on the demo night writes the model's questions
about each memory's sentences (memory in context, up to 3 tries each). `stop` (as shipped): each row stops at the
first token holding a '?' (`rollout.text_stop_ids`; `clean_question` reads no further), and a generate call ends
when all its rows have. `plain` (the baseline): the same code with no such tokens, so every call decodes until each
row has written an end-of-turn or 32 tokens. Modes alternate (stop, plain, stop, ...) with the same seed per
repetition; the random stream after the first shortened call differs, so the questions differ a little (counts
reported). Reported per run: wall seconds, decode steps (new tokens per generate call, summed: work a loaded box
does not change), generate calls, questions kept; and the stop / plain ratios of the sums. Writes
bench/results/question_stop.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_vs_trl import DEMO_DAY, PROJECT, SMOLLM2, build_tiny_model  # noqa: E402

DEFAULT_OUT = PROJECT / "bench" / "results" / "question_stop.json"


def run(model_path: Path, reps: int) -> dict[str, Any]:
    import torch

    import lmsleep.ks.samples as samples
    from lmsleep.config import SeedConfig
    from lmsleep.memory import read_jsonl
    from lmsleep.models import load_base

    model, tokenizer = load_base(model_path)
    memories = read_jsonl(DEMO_DAY)
    shipped = samples.text_stop_ids
    new_tokens: list[int] = []
    generate = model.generate

    def counted(**kwargs):
        out = generate(**kwargs)
        new_tokens.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    model.generate = counted
    runs: dict[str, list[dict[str, Any]]] = {"stop": [], "plain": []}
    try:
        for rep in range(reps):
            for mode in runs:
                samples.text_stop_ids = shipped if mode == "stop" else (lambda tokenizer, chars: frozenset())
                new_tokens.clear()
                torch.manual_seed(rep)
                started = time.perf_counter()
                built = samples.build_samples(model, tokenizer, memories, SeedConfig(), random.Random(rep))
                runs[mode].append({"wall_s": round(time.perf_counter() - started, 2), "decode_steps": sum(new_tokens),
                                   "generate_calls": len(new_tokens),
                                   "questions": sum(s.kind == "question" for s in built)})
                print(mode, rep, runs[mode][-1], flush=True)
    finally:
        samples.text_stop_ids = shipped
    total = {mode: {key: sum(r[key] for r in rows) for key in ("wall_s", "decode_steps")}
             for mode, rows in runs.items()}
    return {"runs": runs, "memories": len(memories),
            "stop_vs_plain": {key: round(total["stop"][key] / total["plain"][key], 3) for key in total["stop"]}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2", help="tiny | smollm2 | a local HF checkpoint folder")
    p.add_argument("--reps", type=int, default=2, help="repetitions of the (stop, plain) pair")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = {"smollm2": SMOLLM2, "tiny": None}.get(args.model, Path(args.model))
        result = run(path or build_tiny_model(Path(tmp) / "tiny"), args.reps)
    result |= {"model": args.model, "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"stop / plain: {result['stop_vs_plain']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
