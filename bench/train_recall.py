"""Does a KS night fail to learn its own training pairs, or to carry them over to the probes' wording?

    python bench/train_recall.py --model smollm2 --seeds 0,1,2        # the demo night, ~6 min a seed on 2 cores
    python bench/train_recall.py --model tiny --seeds 0               # seconds (a smoke run)

One sleep_ks night per seed on the demo night (`lmsleep.bench.methods.consolidate_ks`, the benchmark's own code:
the params' seed section, its anchors), then the trained model, WITHOUT the memory in context, answers:
- its own training questions (tonight's self-written questions, asked in the probes' format): graded against the
  teacher's y, which the student was trained to give. A question "holds a fact" when y names a name or number the
  question does not (`lmsleep.ks.samples` fact surfaces); it is recalled when the answer holds every such fact
  (`lmsleep.grading.contains`). The base model's answers to the same questions are the floor.
- the probes (graded as the benchmark grades them), split by whether a training y held the probe's answer (covered,
  as `lmsleep.bench.coverage` counts it).
High recall of training facts with low recall of covered probes says the facts are stored under the training
questions' wording only; low recall of both says they are not stored. Probes are read only to grade: nothing here
trains on them. Writes bench/results/train_recall.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_vs_trl import DEMO_DAY, PROJECT, SMOLLM2, build_tiny_model  # noqa: E402

DEFAULT_OUT = PROJECT / "bench" / "results" / "train_recall.json"


def y_facts(question: str, y: str) -> list[str]:
    """The names and numbers y gives that the question does not hold: what answering the question teaches."""
    from lmsleep.grading import contains
    from lmsleep.ks.samples import _FACT

    facts = []
    for m in _FACT.finditer(y):
        fact = m.group()
        if m.start() > 0 and not contains(question, fact) and fact not in facts:
            facts.append(fact)
    return facts


def recalled(answer: str, facts: list[str]) -> bool:
    """Every fact y taught is in the answer (whole words, after the grader's normalisation)."""
    from lmsleep.grading import contains

    return bool(facts) and all(contains(answer, f) for f in facts)


def _answers(model, tokenizer, questions: list[str], params) -> list[str]:
    from lmsleep.generation import generate_answers
    from lmsleep.prompts import question_messages

    cfg = params.evaluate
    return generate_answers(model, tokenizer, [question_messages(q) for q in questions], cfg.max_new_tokens,
                            cfg.batch_size, desc="answering")


def one_seed(model_path: Path, seed: int, params, memories: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    from lmsleep.bench.methods import History, consolidate_ks
    from lmsleep.grading import contains
    from lmsleep.models import load_base

    torch.manual_seed(seed)
    cfg = dataclasses.replace(params.seed, seed=seed)
    model, tokenizer = load_base(model_path)
    started = time.perf_counter()
    done = consolidate_ks(model, tokenizer, memories, cfg, History())
    seconds = time.perf_counter() - started
    pairs = [(t["prompt"], t["completion"], t["memory_id"]) for t in done.train_texts
             if t["kind"] == "question" and t["source"] == "memory"]
    pairs = [(q, y, mid, y_facts(q, y)) for q, y, mid in pairs]
    pairs = [p for p in pairs if p[3]]  # a y with no fact of its own teaches no fact to recall
    after = _answers(done.model, tokenizer, [q for q, *_ in pairs], params)
    probes = [(p["question"], p["answer"], str(m["id"])) for m in memories for p in m.get("probes", [])]
    probe_answers = _answers(done.model, tokenizer, [q for q, *_ in probes], params)
    base, _ = load_base(model_path)  # the floor: what the model answered before the night
    before = _answers(base, tokenizer, [q for q, *_ in pairs], params)

    train_rows = [{"question": q, "teacher": y, "facts": facts, "after": a, "before": b,
                   "recalled": recalled(a, facts), "recalled_before": recalled(b, facts)}
                  for (q, y, _, facts), a, b in zip(pairs, after, before)]
    completions: dict[str, list[str]] = {}
    for t in done.train_texts:
        completions.setdefault(str(t.get("memory_id", "")), []).append(t["completion"])
    probe_rows = [{"question": q, "answer": ans, "prediction": p,
                   "covered": any(contains(y, ans) for y in completions.get(mid, [])),
                   "correct": params_grade(p, ans, params)} for (q, ans, mid), p in zip(probes, probe_answers)]
    covered = [r for r in probe_rows if r["covered"]]
    summary = {"seed": seed, "night_seconds": round(seconds, 1), "training_questions_with_facts": len(train_rows),
               "train_recall_after": _share(r["recalled"] for r in train_rows),
               "train_recall_before": _share(r["recalled_before"] for r in train_rows),
               "probes": len(probe_rows), "probe_accuracy": _share(r["correct"] for r in probe_rows),
               "probes_covered": len(covered), "covered_probe_accuracy": _share(r["correct"] for r in covered)}
    print(json.dumps(summary))
    return {**summary, "train_rows": train_rows, "probe_rows": probe_rows}


def params_grade(prediction: str, answer: str, params) -> bool:
    from lmsleep.grading import grade

    return bool(grade(prediction, answer, params.evaluate.f1_threshold)["correct"])


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _share(flags) -> float | None:
    flags = list(flags)
    return round(sum(flags) / len(flags), 4) if flags else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a params override, e.g. seed.ks_steps=192")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    import tempfile

    from lmsleep.config import load_params
    from lmsleep.memory import read_jsonl

    import yaml

    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    params = load_params(PROJECT / "params.yaml", overrides)
    memories = read_jsonl(DEMO_DAY)
    with tempfile.TemporaryDirectory() as tmp:
        model_path = SMOLLM2 if args.model == "smollm2" else build_tiny_model(Path(tmp))
        runs = [one_seed(model_path, int(s), params, memories) for s in args.seeds.split(",")]
    keys = ("train_recall_after", "train_recall_before", "probe_accuracy", "covered_probe_accuracy")
    result = {"benchmark": "train_recall", "model": args.model, "set": overrides, "night": str(DEMO_DAY.name),
              "mean": {k: _mean([r[k] for r in runs if r[k] is not None]) for k in keys}, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result["mean"]), f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
