"""Math consolidation, the protocol runner for the paper's 8B math table (issue 5; PAPER §6): worked solutions are
the memories, held-out problems the probes, graded by the final answer.

    lmsleep bench math --seeds 1 --model /models/Qwen3-8B --option data=train.jsonl --option eval=aime24.jsonl \
        --set evaluate.max_new_tokens=4096                                 # GPU: docs/bench/protocols.md
    lmsleep bench math --seeds 1 --model tiny --option data=tests/three.jsonl --option holdout=1   # smoke

The data is not shipped (the paper does not say which problems it consolidated, and AIME/HMMT are not in
../shared/data): --option data=<jsonl> is required, one record per line with `problem`, `solution` and `answer`
(`answer` may be left out when the solution has a \\boxed{...}). --option eval=<jsonl> gives the held-out problems
(`problem` and `answer`); without it the last `holdout` records of data are held out (default: a quarter, at least
one). A held-out problem whose text is also a training problem is an error (it would leak).

One night (task "math", group "math"): each training record is a memory, text = "Problem: ...\\nSolution: ...".
Held-out problem i is a probe of memory i mod n (so `icl` sees ONE worked solution in context: a 1-shot prompt);
--limit K keeps the first K training records and the first K held-out problems.

Grading (`grade`): the final answer of the prediction (the last \\boxed{...}, else the last number) against the
reference answer (its \\boxed{} content when it is boxed, else all of it), after normalisation (spaces, $,
\\left/\\right, \\!, thousands commas, a trailing period, \\dfrac -> \\frac, "x =" prefixes dropped); numbers
compare as numbers, including a/b and \\frac{a}{b}. correct = equal; f1 = 1.0 or 0.0.

The paper reports avg@16 (16 samples per problem at temperature > 0); the harness answers greedily, once: that is
avg@1 at temperature 0, comparable between methods, not to the paper's table.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

from lmsleep.bench.harness import Benchmark, Task
from lmsleep.config import Params

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}), braces balanced; None when there is none."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, begin = 1, i
    while i < len(text):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i]
        i += 1
    return None  # unbalanced: cut off by the token limit


def final_answer(text: str) -> str | None:
    """The last \\boxed{} content, else the last number in the text, else None."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    numbers = NUMBER.findall(text)
    return numbers[-1] if numbers else None


def normalise_answer(answer: str) -> str:
    text = answer.strip()
    for old, new in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\dfrac", "\\frac"),
                     ("\\tfrac", "\\frac"), ("$", ""), ("\\%", ""), ("%", ""), ("^\\circ", ""), ("^{\\circ}", "")):
        text = text.replace(old, new)
    text = re.sub(r"\\text\{([^}]*)\}", r"\1", text)
    text = re.sub(r"^[a-zA-Z]\s*=\s*", "", text)  # "x = 5" -> "5"
    text = "".join(text.split()).rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):
        text = text.replace(",", "")
    return text


def as_number(text: str) -> Fraction | None:
    match = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", text) or re.fullmatch(r"(-?)(-?\d+)/(-?\d+)", text)
    try:
        if match:
            sign = -1 if match.group(1) else 1
            return sign * Fraction(int(match.group(2)), int(match.group(3)))
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(prediction: str, reference: str) -> bool:
    """Normalised final answers equal, as numbers when both are numbers."""
    predicted, expected = final_answer(prediction), last_boxed(reference) or reference
    if predicted is None:
        return False
    a, b = normalise_answer(predicted), normalise_answer(expected)
    x, y = as_number(a), as_number(b)
    return x == y if x is not None and y is not None else a == b


# ---------------------------------------------------------------- data


def read_records(path: str | Path, need_solution: bool) -> list[dict[str, str]]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"math: {path} not found (--option data=<jsonl> / eval=<jsonl>)")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        if not str(record.get("problem") or "").strip():
            raise ValueError(f"math: {path}:{n} has no 'problem'")
        if need_solution and not str(record.get("solution") or "").strip():
            raise ValueError(f"math: {path}:{n} has no 'solution' (a training record needs one)")
        answer = record.get("answer")
        if answer is None or not str(answer).strip():
            answer = last_boxed(str(record.get("solution") or ""))
        if answer is None:
            raise ValueError(f"math: {path}:{n} has no 'answer' and its solution no \\boxed{{}}")
        records.append({"problem": str(record["problem"]).strip(), "solution": str(record.get("solution") or ""),
                        "answer": str(answer).strip()})
    if not records:
        raise ValueError(f"math: {path} has no records")
    return records


def question(problem: str) -> str:
    return f"Solve this problem. Put the final answer in \\boxed{{}}.\n{problem}"


class MathBenchmark(Benchmark):
    name = "math"
    default_methods = ("base", "icl", "sft", "sleep_ks")

    def __init__(self, data: str | None = None, eval: str | None = None, holdout: int | None = None):  # noqa: A002
        self.data, self.eval = (None if data is None else str(data)), (None if eval is None else str(eval))
        self.holdout = None if holdout is None else int(holdout)
        if self.holdout is not None and self.holdout < 1:
            raise ValueError(f"math: holdout must be >= 1, got {holdout}")

    def split(self) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """(training records, held-out records)."""
        if not self.data:
            raise ValueError("math: no data. The math problems are not shipped with lmsleep: pass --option "
                             "data=<jsonl with problem, solution, answer> (and optionally --option eval=<jsonl of "
                             "held-out problem, answer>); see docs/bench/protocols.md")
        records = read_records(self.data, need_solution=True)
        if self.eval:
            held = read_records(self.eval, need_solution=False)
        else:
            k = self.holdout if self.holdout is not None else max(1, len(records) // 4)
            if k >= len(records):
                raise ValueError(f"math: holdout={k} leaves no training record of {len(records)}")
            records, held = records[:-k], records[-k:]
        train_problems = {" ".join(r["problem"].split()) for r in records}
        leaked = [h["problem"][:60] for h in held if " ".join(h["problem"].split()) in train_problems]
        if leaked:
            raise ValueError(f"math: held-out problem(s) also in the training data: {leaked[:3]}")
        return records, held

    def load(self, limit: int | None) -> list[Task]:
        records, held = self.split()
        if limit:
            records, held = records[:limit], held[:limit]
        source = Path(self.data).name
        memories = [{"id": f"math-{i:04d}", "time": "2025-01-01T00:00:00Z", "source": f"math:{source}/{i}",
                     "kind": "document", "text": f"Problem: {r['problem']}\nSolution: {r['solution']}", "probes": [],
                     "meta": {"answer": r["answer"]}} for i, r in enumerate(records)]
        for i, h in enumerate(held):
            memories[i % len(memories)]["probes"].append({"question": question(h["problem"]), "answer": h["answer"]})
        return [Task("math", "math", memories)]

    grading_note = "Correct = the final answer (last \\boxed{} or last number) equals the reference, as numbers."

    def grade(self, prediction: str, answer: str, params: Params) -> dict[str, Any]:
        correct = answers_match(prediction, answer)
        return {"correct": correct, "f1": float(correct), "extracted": final_answer(prediction)}

    def headline(self, result: dict[str, Any]) -> dict[str, Any]:
        per = result["aggregate"]["math"]
        return {method: {"accuracy": e["accuracy"]["mean"], "ci95": e["accuracy"]["ci95"], "probes": e["probes"]}
                for method, e in per.items()}

    def headline_markdown(self, headline: dict[str, Any]) -> list[str]:
        return ["## Headline: final-answer accuracy on the held-out problems (greedy, avg@1)", "",
                "- " + "; ".join(f"{m} {h['accuracy']:.1%}" for m, h in headline.items())]


BENCHMARK = MathBenchmark()
