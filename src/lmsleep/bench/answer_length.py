"""How the answer-length cap moves a benchmark's accuracy: every kept answer graded again as if generation had
stopped after its first K tokens.

    python -m lmsleep.bench.answer_length bench/results/demo_answers64 --tokens 16,24,32,48 [--json out.json]

Evaluation answers greedily and stops at `evaluate.max_new_tokens`. An answer that restates the question first
("The Tidewhistle Festival is a holiday-themed event in the town of Dunmarrow, where a goat named") can be cut
before its fact, and a method whose answers are wordier loses more to the cap than one whose answers are short.
Greedy decoding makes the first K tokens of a longer answer the answer a K-token cap gives, so one run at a
generous cap measures every shorter one. Tokens are counted by encoding the kept text again with the run's
tokenizer, which can differ from the generated tokens by a token at a merge; the table is a measurement of the
cap, not a replacement for rerunning at it. Grading is the evaluate stage's (`lmsleep.grading.grade` with the
run's `f1_threshold`), the one the quality, SQuAD and nights benchmarks use.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from lmsleep.bench.coverage import _result_file, _rows, emit
from lmsleep.grading import contains, grade


def token_truncator(tokenizer) -> Callable[[str, int], tuple[str, int]]:
    """(text, k) -> (the text's first k tokens as text, the text's length in tokens)."""
    def cut(text: str, k: int) -> tuple[str, int]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return tokenizer.decode(ids[:k], skip_special_tokens=True).strip(), len(ids)
    return cut


def accuracy_by_cap(answers: Iterable[dict[str, Any]], cut: Callable[[str, int], tuple[str, int]],
                    caps: Sequence[int], run_cap: int, f1_threshold: float) -> dict[str, Any]:
    """Per method (and in-context or not) and seed: probes, correct as kept, correct at each cap, how many kept
    answers reached the run's own cap (those a longer cap could still change), and how many correct kept answers
    also name another probe's answer that neither their question nor their own answer holds (`hedged`: a long
    answer listing candidates would pass the containment grader; this counts how often that happens)."""
    answers = list(answers)
    references = {r["answer"] for r in answers}
    cells: dict[str, dict[Any, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    for r in answers:
        key = f"{r['method']}{' (in context)' if r.get('in_context') else ''}"
        cell = cells[key][r.get("seed", 0)]
        cell["probes"] += 1
        cell["correct"] += bool(r["correct"])
        for k in caps:
            text, _ = cut(r["prediction"], k)
            cell[f"correct_at_{k}"] += bool(grade(text, r["answer"], f1_threshold)["correct"])
        _, length = cut(r["prediction"], 0)
        cell["at_run_cap"] += length >= run_cap
        cell["wrong_at_run_cap"] += length >= run_cap and not r["correct"]
        cell["hedged"] += bool(r["correct"]) and any(
            contains(r["prediction"], other) and not contains(r["question"], other)
            and not contains(r["answer"], other) for other in references)
    methods = {}
    for key, seeds in sorted(cells.items()):
        per_seed = {str(s): dict(c) for s, c in sorted(seeds.items())}
        mean = {}
        for field in ["correct", *(f"correct_at_{k}" for k in caps)]:
            mean[field] = sum(c[field] / c["probes"] for c in per_seed.values()) / len(per_seed)
        methods[key] = {"seeds": per_seed, "mean_accuracy": mean}
    return {"run_cap": run_cap, "caps": list(caps), "f1_threshold": f1_threshold, "methods": methods}


def markdown(report: dict[str, Any]) -> str:
    caps = report["caps"]
    lines = [f"Accuracy by answer-length cap (mean over seeds; the run answered with up to {report['run_cap']} "
             "tokens)", "", "| method | seeds | " + " | ".join(f"{k} tokens" for k in caps)
             + f" | as kept ({report['run_cap']}) | kept answers at the cap (wrong) | correct and naming another "
             "probe's answer |", "|---|---|" + "---|" * (len(caps) + 3)]
    for key, m in report["methods"].items():
        seeds = m["seeds"].values()
        at_cap = sum(c["at_run_cap"] for c in seeds)
        wrong = sum(c["wrong_at_run_cap"] for c in seeds)
        probes = sum(c["probes"] for c in seeds)
        accs = " | ".join(f"{100 * m['mean_accuracy'][f'correct_at_{k}']:.1f}%" for k in caps)
        lines.append(f"| {key} | {len(m['seeds'])} | {accs} | {100 * m['mean_accuracy']['correct']:.1f}% | "
                     f"{at_cap} of {probes} ({wrong}) | {sum(c['hedged'] for c in seeds)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", type=Path, help="a benchmark's --out folder (its <stem>.json and *_answers.jsonl, or a "
                   "stopped run's *.partial.* files)")
    p.add_argument("--stem", default="seed_quality", help="the result files' stem")
    p.add_argument("--tokens", default="16,24,32,48", help="caps to grade at, comma-separated")
    p.add_argument("--model", type=Path, default=Path("models/base/smollm2"),
                   help="a folder with the run's tokenizer")
    p.add_argument("--json", type=Path, help="also write the report here")
    args = p.parse_args(argv)
    answers = _result_file(args.folder, args.stem, "answers")
    result = args.folder / f"{args.stem}.json"
    if not result.exists():
        result = args.folder / f"{args.stem}.partial.json"
    for path in (answers, result):
        if not path.exists():
            p.error(f"{path} not found")
    evaluate = json.loads(result.read_text(encoding="utf-8")).get("evaluate_config") or {}
    if "max_new_tokens" not in evaluate:
        p.error(f"{result} records no evaluate_config.max_new_tokens: the run's own cap is unknown")
    from transformers import AutoTokenizer  # only the CLI needs it; the function takes any truncator

    caps = sorted({int(k) for k in args.tokens.split(",") if k.strip()})
    cut = token_truncator(AutoTokenizer.from_pretrained(args.model))
    report = accuracy_by_cap(_rows(answers), cut, caps, int(evaluate["max_new_tokens"]),
                             float(evaluate.get("f1_threshold", 0.5)))
    return emit(markdown(report), report, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
