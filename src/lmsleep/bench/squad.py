"""SQuAD knowledge incorporation, SEAL's protocol (issue 5, benchmark 1): a passage is learned into the weights and
its questions are answered WITHOUT it.

    lmsleep bench squad --seeds 3                                   # make bench-squad: the first 3 passages
    lmsleep bench squad --seeds 3 --limit 0                         # all 200 passages (hours on CPU)
    lmsleep bench squad --seeds 1 --limit 10 --option passages_per_night=5
    lmsleep bench squad --seeds 1 --limit 2 --model tiny --option mode=single

Data: SEAL's 200-passage evaluation set (../shared/data/squad_seal/seal_eval200_base_val.json; SQuAD v1.1 dev,
CC BY-SA 4.0; read its SOURCE.md), in its own order; --limit K keeps the first K passages (default 3, the size whose
3 seeds ran in 35 minutes on 2 CPU cores; 0 = all 200). A passage is one memory,
text = "<title>\n<context>" (SEAL's passage format), its questions the probes. SEAL's self-edit completions are not
used (they are SEAL's own synthetic data, the `seal_like` method's business).

Modes (--option mode=single|multi|both, default both):
- single: every passage is its own night, learned alone from a fresh model (SEAL's single-passage setting), group
  "single";
- multi: passages_per_night passages (default 0 = all kept passages, SEAL's 200-passage continued-pretraining setting)
  consolidated in ONE night, all their questions asked after it, group "multi-<k>".
Headline: per mode and method, the gain over base and the fraction of the in-context gap closed.

Grading is the evaluate stage's local grader (containment or token F1 >= 0.5), not SEAL's GPT-4 grader, and the
model is SmolLM2-135M, so the numbers are not comparable to the paper's; the comparison between methods is the point.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from lmsleep.bench.harness import REPO, Benchmark, Task

SEAL_EVAL = "seal_eval200_base_val.json"
MODES = ("single", "multi", "both")


def shared_data() -> Path:
    """../shared/data next to the repo; LMSLEEP_SHARED_DATA overrides (read in place, never copied into the repo)."""
    return Path(os.environ.get("LMSLEEP_SHARED_DATA") or REPO.parent / "shared" / "data")


@lru_cache(maxsize=2)
def seal_passages(path: str | None = None) -> tuple[dict[str, Any], ...]:
    path = Path(path) if path else shared_data() / "squad_seal" / SEAL_EVAL
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the SQuAD benchmark reads ../shared/data/squad_seal "
                                "(or set LMSLEEP_SHARED_DATA)")
    return tuple(json.loads(path.read_text(encoding="utf-8")))


def passage_memory(index: int, record: dict[str, Any]) -> dict[str, Any]:
    """One SEAL passage as a memory record: title + context as text, its questions as held-out probes."""
    return {"id": f"squad-{index:03d}", "time": "2016-06-16T00:00:00Z", "source": f"squad_seal:eval200/{index}",
            "kind": "document", "text": f"{record['title']}\n{record['context']}",
            "probes": [{"question": q["question"], "answer": q["answer"]} for q in record["questions"]],
            "meta": {"lang": "en", "title": record["title"]}}


def squad_memories(limit: int | None) -> list[dict[str, Any]]:
    """The first `limit` (all if None) passages of SEAL's 200-passage eval set, in the file's order."""
    records = seal_passages()
    return [passage_memory(i, r) for i, r in enumerate(records[:limit] if limit else records)]


class SquadBenchmark(Benchmark):
    name = "squad"
    default_methods = ("base", "icl", "sft", "context_distill_offpolicy", "sleep_ks")
    # SmolLM2's KS night costs 4-6 minutes of one thread whatever its size (96 steps; --memory fast), and single mode
    # is one night per passage: 3 passages (3 single nights + 1 multi-3 night per seed) ran 3 seeds in 35 minutes on
    # 2 cores (docs/results.md, "Benchmark sizing"). --limit 0 runs all 200 (hours; a GPU's job)
    default_limit = 3

    def __init__(self, mode: str = "both", passages_per_night: int = 0):
        if mode not in MODES:
            raise ValueError(f"squad: mode must be one of {MODES}, got {mode!r}")
        if passages_per_night < 0:
            raise ValueError(f"squad: passages_per_night must be >= 0 (0 = all), got {passages_per_night}")
        self.mode, self.passages_per_night = mode, passages_per_night

    def load(self, limit: int | None) -> list[Task]:
        memories = squad_memories(limit)
        tasks = []
        if self.mode in ("single", "both"):
            tasks += [Task(f"single-{m['id']}", "single", [m]) for m in memories]
        if self.mode in ("multi", "both"):
            k = self.passages_per_night or len(memories)
            tasks += [Task(f"multi{k}-night{i // k:03d}", f"multi-{k}", memories[i : i + k])
                      for i in range(0, len(memories), k)]
        return tasks

    def headline(self, result: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for group, per_method in result["aggregate"].items():
            out[group] = {method: {"accuracy": e["accuracy"]["mean"], "accuracy_ci95": e["accuracy"]["ci95"],
                                   "gain_over_base": (e.get("gain_over_base") or {}).get("mean"),
                                   "gain_over_base_ci95": (e.get("gain_over_base") or {}).get("ci95"),
                                   "gap_closed": e.get("gap_closed")}
                          for method, e in per_method.items()}
        return out

    def headline_markdown(self, headline: dict[str, Any]) -> list[str]:
        lines = ["## Headline: gain over base and share of the in-context gap closed", ""]
        for group, per_method in headline.items():
            parts = []
            for method, h in per_method.items():
                if method in ("base", "icl") or h["gain_over_base"] is None:
                    continue
                gap = "n/a" if h["gap_closed"] is None else f"{h['gap_closed']:.0%}"
                parts.append(f"{method} {h['gain_over_base']:+.1%} over base, {gap} of the gap")
            lines.append(f"- {group}: " + ("; ".join(parts) or "no trained method"))
        return lines


BENCHMARK = SquadBenchmark()
