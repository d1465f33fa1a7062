"""Why a consolidator misses a probe: the fact never reached training, or it did and is not recalled.

    python -m lmsleep.bench.coverage bench/results/squad20_prompts24 [--method sleep_ks] [--json out.json]

A benchmark run keeps every probe's graded answer (`<stem>_answers.jsonl`) and every text the methods trained on
(`<stem>_train_texts.jsonl`). A probe is **covered** by a method's training when its reference answer occurs, as
whole words after the grader's normalisation (`lmsleep.grading.contains`), in a completion that method trained on
for the probe's own memory in the same seed (for a method that trains on the memory text itself, SFT or the
fast-level sender's awake reading, every probe whose answer is in its passage is covered). Covered probes are split by the kinds of prompt whose completions held
the answer (question, continuation, cloze, dream:..., on-policy, ...), and for each group the table gives how many
the method then answered correctly without the memory.

This reads only the results: the probes were never shown to training (the leak test proves it), and coverage is
decided after the fact, from the answers the grader already holds.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lmsleep.grading import contains


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def fact_coverage(answers: Iterable[dict[str, Any]], train_texts: Iterable[dict[str, Any]],
                  method: str) -> dict[str, Any]:
    """Per seed and over all seeds: probes covered by `method`'s training, and its accuracy on covered / uncovered
    probes, by the kinds of prompt that carried the answer."""
    completions: dict[tuple[Any, str], list[tuple[str, str]]] = defaultdict(list)
    for r in train_texts:  # a KS row has a prompt and its completion; SFT and awake rows a text; rows of no memory
        if r.get("method") == method and r.get("memory_id"):  # (replay, anchors, sleep-side chains) cover none
            completions[(r.get("seed", 0), str(r["memory_id"]))].append((r.get("kind", "text"),
                                                                          r.get("completion", r.get("text", ""))))
    trained_seeds = {seed for seed, _ in completions}  # a resumed run may lack an early seed's training texts
    probes = [r for r in answers if r.get("method") == method and r.get("seed", 0) in trained_seeds]
    if not probes:
        raise ValueError(f"coverage: no answers of method {method!r} in a seed whose training texts were kept")
    # the in-context ceiling trains nothing and answers greedily: one seed's answers stand for every seed's
    icl = {r["question"]: bool(r["correct"]) for r in answers if r.get("method") == "icl"}
    by_seed: dict[Any, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    both = defaultdict(lambda: [0, 0])  # covered probes the in-context ceiling answers: [probes, correct]
    for r in probes:
        seed = r.get("seed", 0)
        kinds = sorted({kind for kind, text in completions[(seed, str(r["memory_id"]))] if contains(text, r["answer"])})
        cell = by_seed[seed]["+".join(kinds) or "not covered"]
        cell[0] += 1
        cell[1] += bool(r["correct"])
        if kinds and icl.get(r["question"]):
            both[seed][0] += 1
            both[seed][1] += bool(r["correct"])
    seeds = {}
    for seed, groups in sorted(by_seed.items()):
        total = sum(n for n, _ in groups.values())
        uncovered = groups.get("not covered", [0, 0])
        covered = [total - uncovered[0], sum(c for _, c in groups.values()) - uncovered[1]]
        seeds[str(seed)] = {"probes": total, "covered": covered[0], "correct_when_covered": covered[1],
                            "not_covered": uncovered[0], "correct_when_not_covered": uncovered[1],
                            "covered_and_icl_correct": both[seed][0], "correct_when_covered_and_icl_correct":
                            both[seed][1], "by_kinds": {k: {"probes": n, "correct": c}
                                                        for k, (n, c) in sorted(groups.items())}}
    return {"method": method, "seeds": seeds, "icl_answers": bool(icl),
            "rule": "covered = the reference answer occurs (grading.contains) in a completion the method trained on "
                    "for the probe's memory, same seed"}


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Coverage of `{report['method']}` ({report['rule']})", "",
             "| seed | probes | covered | correct when covered | correct when not covered | covered and icl-correct: "
             "correct |", "|---|---|---|---|---|---|"]
    for seed, s in report["seeds"].items():
        lines.append(f"| {seed} | {s['probes']} | {s['covered']} | {s['correct_when_covered']} / {s['covered']} | "
                     f"{s['correct_when_not_covered']} / {s['not_covered']} | "
                     + (f"{s['correct_when_covered_and_icl_correct']} / {s['covered_and_icl_correct']} |"
                        if report["icl_answers"] else "no icl answers kept |"))
    lines += ["", "| seed | answer found in completions of | probes | correct |", "|---|---|---|---|"]
    for seed, s in report["seeds"].items():
        lines += [f"| {seed} | {kinds} | {g['probes']} | {g['correct']} |" for kinds, g in s["by_kinds"].items()]
    return "\n".join(lines)


def _result_file(folder: Path, stem: str, part: str) -> Path:
    """`<stem>_<part>.jsonl`, or a stopped run's `<stem>_<part>.partial.jsonl` (its finished seeds and methods)."""
    done = folder / f"{stem}_{part}.jsonl"
    partial = folder / f"{stem}_{part}.partial.jsonl"
    return partial if not done.exists() and partial.exists() else done


def emit(table: str, report: dict[str, Any], json_path: Path | None) -> int:
    """The analysis CLIs' ending: print the table, and with a path also write the report as JSON; exit status 0."""
    print(table)
    if json_path:
        json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", type=Path, help="a benchmark's --out folder (its *_answers.jsonl and *_train_texts.jsonl, "
                   "or a stopped run's *.partial.jsonl)")
    p.add_argument("--stem", default="seed_quality", help="the result files' stem")
    p.add_argument("--method", default="sleep_ks")
    p.add_argument("--json", type=Path, help="also write the report here")
    args = p.parse_args(argv)
    answers, texts = (_result_file(args.folder, args.stem, part) for part in ("answers", "train_texts"))
    for path in (answers, texts):
        if not path.exists():
            p.error(f"{path} not found")
    report = fact_coverage(_rows(answers), _rows(texts), args.method)
    return emit(markdown(report), report, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
