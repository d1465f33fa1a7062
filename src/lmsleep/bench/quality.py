"""Seed quality (issue 3): does Knowledge Seeding put memories into the weights better than SFT?

    lmsleep bench quality --seeds 3                        # make bench-quality -> bench/results/seed_quality.json
    lmsleep bench quality --seeds 1 --limit 2 --model smollm2
    lmsleep bench quality --seeds 3 --option sets=demo      # one set

Two fixed sets of memories with held-out probes, each consolidated in ONE night per seed and method (a fresh model
each time): `demo` = the bundled demo day (data/demo/day1.jsonl, 12 memories, 24 probes) and `squad20` = the first
20 passages of SEAL's 200-passage SQuAD eval set (lmsleep.bench.squad; ~90 questions). --limit K keeps the first K
memories of each set. Methods: base (before), icl (the in-context ceiling), sft and sleep_ks with the params' seed
section (seed.lr/epochs... for sft, seed.ks_* for KS; `--set seed.ks_steps=60` etc. to try settings).

Headline, per set: before, sft, ks, ceiling (no-context accuracy; ceiling with the memory in context), each with its
mean, 95% interval over seeds and per-seed values; gap_closed_by_ks = (ks - before) / (ceiling - before) on means;
ks_beats_sft_beyond_intervals = KS's interval lies wholly above SFT's. Target (issue 3): gap closed >= 0.8 and KS
beats SFT beyond the intervals.
"""

from __future__ import annotations

from typing import Any

from lmsleep.bench.harness import REPO, Benchmark, Task
from lmsleep.bench.metrics import beats_beyond_intervals
from lmsleep.bench.squad import squad_memories
from lmsleep.memory import read_jsonl

DEMO_DAY = REPO / "data" / "demo" / "day1.jsonl"
SQUAD_PASSAGES = 20
ROLES = {"before": "base", "sft": "sft", "ks": "sleep_ks", "ceiling": "icl"}
TARGET_GAP_CLOSED = 0.8


class QualityBenchmark(Benchmark):
    name = "quality"
    result_name = "seed_quality"
    default_methods = ("base", "icl", "sft", "sleep_ks")

    def __init__(self, sets: str = f"demo,squad{SQUAD_PASSAGES}"):
        """`--option sets=demo` runs one set only (each set is a night of its own)."""
        known = ("demo", f"squad{SQUAD_PASSAGES}")
        self.sets = [s.strip() for s in str(sets).split(",") if s.strip()]
        if not self.sets or any(s not in known for s in self.sets):
            raise ValueError(f"quality: sets must be a comma list of {known}, got {sets!r}")

    def load(self, limit: int | None) -> list[Task]:
        loaders = {"demo": lambda: read_jsonl(DEMO_DAY),
                   f"squad{SQUAD_PASSAGES}": lambda: squad_memories(SQUAD_PASSAGES)}
        tasks = []
        for name in self.sets:
            memories = loaders[name]()
            tasks.append(Task(name, name, memories[:limit] if limit else memories))
        return tasks

    def headline(self, result: dict[str, Any]) -> dict[str, Any]:
        sets = {}
        for task in result["tasks"]:
            per_method = result["aggregate"][task["group"]]
            entry: dict[str, Any] = {"memories": task["memories"], "probes": task["probes"]}
            for role, method in ROLES.items():
                stat = (per_method.get(method) or {}).get("accuracy")
                entry[role] = None if stat is None else {k: stat[k] for k in ("mean", "ci95", "per_seed", "ci_method")}
                if stat is not None:
                    entry[role]["ci95_probes_seed0"] = per_method[method]["accuracy_ci95_probes_seed0"]
            ks, sft = per_method.get("sleep_ks"), per_method.get("sft")
            entry["gap_closed_by_ks"] = ks and ks["gap_closed"]
            entry["ks_beats_sft_beyond_intervals"] = (beats_beyond_intervals(ks["accuracy"], sft["accuracy"])
                                                      if ks and sft else None)
            gap = entry["gap_closed_by_ks"]
            entry["target_met"] = (gap is not None and gap >= TARGET_GAP_CLOSED
                                   and entry["ks_beats_sft_beyond_intervals"] is True)
            sets[task["name"]] = entry
        return {"sets": sets, "target": f"gap_closed_by_ks >= {TARGET_GAP_CLOSED} and KS beats SFT beyond the "
                                        "95% intervals, on every set"}

    def headline_markdown(self, headline: dict[str, Any]) -> list[str]:
        def pct(stat):
            if not stat or stat["mean"] is None:
                return "n/a"
            return f"{stat['mean']:.1%}" + (f" [{stat['ci95'][0]:.1%}, {stat['ci95'][1]:.1%}]" if stat["ci95"] else "")

        lines = ["## Issue 3: KS vs SFT (no-context accuracy, 95% intervals)", "",
                 "| set | probes | before | SFT | KS | ceiling (in context) | gap closed by KS | KS > SFT beyond CIs "
                 "| target met |", "|---|---|---|---|---|---|---|---|---|"]
        for name, s in headline["sets"].items():
            gap = "n/a" if s["gap_closed_by_ks"] is None else f"{s['gap_closed_by_ks']:.0%}"
            lines.append(f"| {name} | {s['probes']} | {pct(s['before'])} | {pct(s['sft'])} | {pct(s['ks'])} "
                         f"| {pct(s['ceiling'])} | {gap} | {s['ks_beats_sft_beyond_intervals']} | {s['target_met']} |")
        return lines + ["", f"Target: {headline['target']}."]


BENCHMARK = QualityBenchmark()
