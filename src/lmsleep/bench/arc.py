"""Few-shot ARC, SEAL's protocol runner (issue 5; PAPER §6): a task's demonstrations are the memory, its held-out
test input the probe, graded by exact grid match.

    lmsleep bench arc --seeds 1 --model /models/Llama-3.2-1B-Instruct --set evaluate.max_new_tokens=1024   # GPU
    lmsleep bench arc --seeds 1 --limit 2 --model tiny --option split=training                            # smoke

This does not fit the 2-core CPU box at the paper's scale (docs/bench/protocols.md has the arithmetic and the GPU
commands); it runs here end to end on the tiny model and small fixtures (tests/test_bench_protocols.py).

Data (../shared/data/arc, or LMSLEEP_SHARED_DATA, or --option data=<folder>; read its SOURCE.md): SEAL's filtered
subsets in Kaggle layout, `arc-agi_evaluation_challenges_filtered_1B_eval_set.json` (training:
`arc-agi_training_challenges_filtered_1B_training_set.json`; {task_id: {train: [{input, output}], test: [{input}]}})
and the matching `_solutions_` file ({task_id: [output grid per test input]}).
--option split=evaluation (default: the 10 tasks SEAL reports for Llama-3.2-1B) | training (its 12 RL tasks);
--option subset=all reads the unfiltered 400-task files of that split instead. --limit K keeps the first K tasks.

Each task is its own night (a fresh model, group "arc-<split>"), one memory: the task's train pairs as text (the
few-shot demonstrations, what `icl` gets in context and what the trained methods consolidate). Each test input is a
probe, "Apply the rule of the examples to this input grid ..." -> the output grid as text. A grid is serialised as
one line per row, cells as digits separated by spaces (our representation; SEAL's prompts format grids their own way).

Grading (`grade`): the first grid parsed from the prediction (the longest run of lines made only of digits and spaces)
must equal the answer exactly (shape and every cell): correct = exact match; f1 = the fraction of cells that match
when the shapes agree, else 0 (a partial-credit view; the paper reports exact match only). The answer needs
rows x (2 x columns) characters, so evaluate.max_new_tokens must cover the largest answer grid: `base_model` prints
a warning when it does not.

Not SEAL's method: SEAL and the paper also augment each task (rotations, flips, transposes) and train per-task
adapters with test-time training; here the methods are lmsleep's (bench.methods) on the demonstrations alone.
The paper reports ICL 0%, TTT 10%, SEAL 72.5%, Sleep 80% on its held-out tasks with Llama-3.2-1B.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lmsleep.bench.harness import Benchmark, Task
from lmsleep.bench.squad import shared_data
from lmsleep.config import Params, Workspace

SPLITS = ("evaluation", "training")
SUBSETS = ("seal", "all")
GRID_LINE = re.compile(r"^[0-9](?: [0-9])*$")


def grid_text(grid: list[list[int]]) -> str:
    return "\n".join(" ".join(str(int(cell)) for cell in row) for row in grid)


def parse_grid(text: str) -> list[list[int]] | None:
    """The first block of consecutive lines that are all digits separated by single spaces; None if there is none.
    Rows of unequal length are returned as they are (they will not match a rectangular answer)."""
    best: list[str] = []
    block: list[str] = []
    for line in text.splitlines() + [""]:
        line = line.strip().strip("`")
        if line and GRID_LINE.match(line):
            block.append(line)
            continue
        if block and not best:
            best = block
        block = []
    if not best:
        return None
    return [[int(c) for c in line.split()] for line in best]


def files(split: str, subset: str) -> tuple[str, str]:
    suffix = f"_filtered_1B_{'eval' if split == 'evaluation' else split}_set" if subset == "seal" else ""
    return f"arc-agi_{split}_challenges{suffix}.json", f"arc-agi_{split}_solutions{suffix}.json"


def read_tasks(folder: Path, split: str, subset: str) -> list[tuple[str, dict[str, Any], list]]:
    """(task id, challenge, solutions) in the file's order."""
    challenges_name, solutions_name = files(split, subset)
    paths = [folder / challenges_name, folder / solutions_name]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: the arc benchmark reads SEAL's ARC files from "
                                    "../shared/data/arc (or LMSLEEP_SHARED_DATA, or --option data=<folder>)")
    challenges, solutions = (json.loads(p.read_text(encoding="utf-8")) for p in paths)
    missing = [t for t in challenges if t not in solutions]
    if missing:
        raise ValueError(f"arc: no solutions for task(s) {missing[:5]} in {paths[1]}")
    return [(task_id, challenge, solutions[task_id]) for task_id, challenge in challenges.items()]


def task_memory(task_id: str, challenge: dict[str, Any], solutions: list) -> dict[str, Any]:
    """One ARC task as a memory: its demonstrations as text, each test input a probe with its output grid."""
    if len(solutions) != len(challenge["test"]):
        raise ValueError(f"arc: task {task_id} has {len(challenge['test'])} test inputs, {len(solutions)} solutions")
    lines = [f"ARC task {task_id}: every example maps an input grid to an output grid by the same rule "
             "(digits are colours)."]
    for i, pair in enumerate(challenge["train"], 1):
        lines += ["", f"Example {i}", "Input:", grid_text(pair["input"]), "Output:", grid_text(pair["output"])]
    text = "\n".join(lines)
    probes = []
    for test, answer in zip(challenge["test"], solutions):
        if grid_text(test["input"]) in text:  # a test input that is also a demonstration would leak
            raise ValueError(f"arc: task {task_id}: a test input is also one of its train inputs")
        probes.append({"question": f"Apply the rule of ARC task {task_id} to this input grid and give the output "
                                   f"grid (one line per row, digits separated by spaces).\nInput:\n"
                                   f"{grid_text(test['input'])}",
                       "answer": grid_text(answer)})
    return {"id": f"arc-{task_id}", "time": "2019-11-05T00:00:00Z", "source": f"arc:{task_id}", "kind": "document",
            "text": text, "probes": probes, "meta": {"task_id": task_id, "train_pairs": len(challenge["train"])}}


class ArcBenchmark(Benchmark):
    name = "arc"
    default_methods = ("base", "icl", "sft", "sleep_ks")

    def __init__(self, split: str = "evaluation", subset: str = "seal", data: str | None = None):
        if split not in SPLITS:
            raise ValueError(f"arc: split must be one of {SPLITS}, got {split!r}")
        if subset not in SUBSETS:
            raise ValueError(f"arc: subset must be one of {SUBSETS}, got {subset!r}")
        self.split, self.subset, self.data = split, subset, None if data is None else str(data)

    def folder(self) -> Path:
        return Path(self.data) if self.data else shared_data() / "arc"

    def load(self, limit: int | None) -> list[Task]:
        tasks = read_tasks(self.folder(), self.split, self.subset)
        group = f"arc-{self.split}" + ("" if self.subset == "seal" else "-all")
        return [Task(f"arc-{task_id}", group, [task_memory(task_id, challenge, solutions)])
                for task_id, challenge, solutions in (tasks[:limit] if limit else tasks)]

    def base_model(self, ws: Workspace, params: Params) -> Path | None:
        """The params' model (--model); only warns when answers cannot fit in evaluate.max_new_tokens."""
        longest = max((len(p["answer"]) for t in self.load(None) for m in t.memories for p in m["probes"]), default=0)
        if params.evaluate.max_new_tokens < longest:  # a digit and a space or newline are at least one token each
            print(f"arc: WARNING evaluate.max_new_tokens={params.evaluate.max_new_tokens} is shorter than the longest "
                  f"answer grid ({longest} characters, ~{longest} tokens): such answers are cut and graded wrong; "
                  f"use --set evaluate.max_new_tokens={longest + 16}")
        return None

    grading_note = "Correct = the predicted grid equals the answer grid exactly; the F1 column is cell accuracy."

    def grade(self, prediction: str, answer: str, params: Params) -> dict[str, Any]:
        predicted, expected = parse_grid(prediction), parse_grid(answer)
        if expected is None:
            raise ValueError(f"arc: the answer is not a grid: {answer!r}")
        same_shape = predicted is not None and [len(r) for r in predicted] == [len(r) for r in expected]
        cells = sum(len(r) for r in expected)
        matching = sum(a == b for pr, er in zip(predicted, expected) for a, b in zip(pr, er)) if same_shape else 0
        return {"correct": same_shape and matching == cells, "f1": matching / cells, "parsed": predicted is not None}

    def headline(self, result: dict[str, Any]) -> dict[str, Any]:
        return {group: {method: {"exact_match": e["accuracy"]["mean"], "ci95": e["accuracy"]["ci95"],
                                 "cell_accuracy": e["f1"]["mean"], "probes": e["probes"]}
                        for method, e in per.items()} for group, per in result["aggregate"].items()}

    def headline_markdown(self, headline: dict[str, Any]) -> list[str]:
        lines = ["## Headline: exact grid match (accuracy) and cell accuracy when the shape is right (f1)", ""]
        for group, per in headline.items():
            lines.append(f"- {group}: " + "; ".join(
                f"{m} {h['exact_match']:.0%} exact, {h['cell_accuracy']:.0%} cells" for m, h in per.items()))
        return lines + ["", "The paper (Llama-3.2-1B, SEAL's held-out tasks): ICL 0%, TTT 10%, SEAL 72.5%, Sleep 80%."]


BENCHMARK = ArcBenchmark()
