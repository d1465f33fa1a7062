"""Two benchmark runs of one method, seed by seed: a setting against the defaults, from the saved results alone.

    python -m lmsleep.bench.compare bench/results/demo_lr3e-3 <the defaults' run> [--method sleep_ks] [--json out]
    python -m lmsleep.bench.compare <a nights run> bench/results/nights_grounded/grounded --stem nights

A `--set` sweep is one run per value (`lmsleep bench quality ... --set seed.ks_lr=0.003 --out A`), so the harness's
own paired table (methods within one run) does not cover it. This reads both runs' `<stem>.json` and, per group
(demo, squad20, ...), gives each run's per-seed no-context accuracy with its mean and 95% interval, the paired
difference over the seeds both ran (the same seeds mean the same memories, probes and sampling seeds, so the
difference removes what the seeds share; for a sequential run such as the 30 nights, the final average
accuracy over every task so far, ACC), and each run's reference-perplexity drift against the base model (per seed:
the night's model, or the stream's last) with how many of them the promotion gate (`promote.max_perplexity_increase`)
would have refused.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path
from typing import Any

from lmsleep.bench import metrics
from lmsleep.bench.coverage import emit
from lmsleep.config import PromoteConfig


def load_run(folder: Path, stem: str) -> dict[str, Any]:
    """`<stem>.json`, or `<stem>.json.gz` (large kept results, the 30-night stream's, are stored gzipped)."""
    path = Path(folder) / f"{stem}.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    packed = path.with_name(path.name + ".gz")
    if packed.exists():
        with gzip.open(packed, "rt", encoding="utf-8") as f:
            return json.load(f)
    raise FileNotFoundError(f"{path} not found: pass a benchmark's --out folder (and --stem if not {stem!r})")


def _per_seed(run: dict[str, Any], group: str, method: str, quantity: str) -> dict[int, float | None]:
    stat = run["aggregate"].get(group, {}).get(method, {}).get(quantity)
    if stat is None:
        return {}
    return dict(zip(run["seeds"], stat["per_seed"]))


def _drift(run: dict[str, Any], group: str, method: str, gate: float) -> dict[str, Any]:
    per_seed = _per_seed(run, group, method, "perplexity_drift")  # the harness's: perplexity / the base's - 1
    kept = [d for d in per_seed.values() if d is not None]
    return {"per_seed": per_seed, "mean": sum(kept) / len(kept) if kept else None,
            "past_gate": sum(d > gate for d in kept), "nights": len(kept)}


def compare(run: dict[str, Any], reference: dict[str, Any], method: str, gate: float) -> dict[str, Any]:
    """Per group both runs scored `method` in: accuracy per seed, mean [95%], paired difference, perplexity drift."""
    groups = [g for g, per_method in run["aggregate"].items()
              if method in per_method and method in reference["aggregate"].get(g, {})]
    if not groups:
        raise ValueError(f"no group where both runs scored {method!r}")
    out: dict[str, Any] = {"method": method, "gate": gate, "groups": {}}
    for group in groups:
        mine, theirs = (_per_seed(r, group, method, "accuracy") for r in (run, reference))
        seeds = sorted(set(mine) & set(theirs))
        if not seeds:
            raise ValueError(f"{group}: the runs share no seed ({sorted(mine)} against {sorted(theirs)})")
        out["groups"][group] = {
            "seeds": seeds,
            "run": metrics.seed_interval([mine[s] for s in seeds]),
            "reference": metrics.seed_interval([theirs[s] for s in seeds]),
            "paired": metrics.paired_difference([mine[s] for s in seeds], [theirs[s] for s in seeds]),
            "run_drift": _drift(run, group, method, gate),
            "reference_drift": _drift(reference, group, method, gate)}
    return out


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _interval(stat: dict[str, Any], signed: bool = False) -> str:
    mean = _pct(stat["mean"]) if not signed or stat["mean"] is None else f"{100 * stat['mean']:+.1f}"
    if not stat.get("ci95"):
        return mean
    low, high = stat["ci95"]
    return f"{mean} [{100 * low:.1f}, {100 * high:.1f}]"


def markdown(report: dict[str, Any], names: tuple[str, str]) -> str:
    lines = [f"{report['method']}, no-context accuracy (%) seed by seed; perplexity drift against the base model, "
             f"gate +{100 * report['gate']:.0f}%", "",
             "| group | run | per seed | mean [95%] | drift per seed | mean drift | past the gate |",
             "|---|---|---|---|---|---|---|"]
    for group, g in report["groups"].items():
        for name, acc, drift in ((names[0], g["run"], g["run_drift"]),
                                 (names[1], g["reference"], g["reference_drift"])):
            seeds = ", ".join(_pct(v) for v in acc["per_seed"])
            drifts = ", ".join("–" if drift["per_seed"].get(s) is None else f"{100 * drift['per_seed'][s]:+.1f}"
                               for s in g["seeds"])
            mean_drift = "–" if drift["mean"] is None else f"{100 * drift['mean']:+.1f}%"
            lines.append(f"| {group} | {name} | {seeds} | {_interval(acc)} | {drifts} | {mean_drift} | "
                         f"{drift['past_gate']} of {drift['nights']} |")
        paired = g["paired"]
        beyond = {"above": "above 0", "below": "below 0", None: "includes 0"}[paired["beyond_zero"]]
        lines.append(f"| {group} | paired difference (points) | "
                     f"{', '.join(f'{100 * v:+.1f}' for v in paired['per_seed'] if v is not None)} | "
                     f"{_interval(paired, signed=True)} ({beyond}) | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="a benchmark's --out folder: the setting under test")
    p.add_argument("reference", type=Path, help="the --out folder it is compared with (e.g. the defaults' run)")
    p.add_argument("--stem", default="seed_quality", help="the result files' stem")
    p.add_argument("--method", default="sleep_ks")
    p.add_argument("--gate", type=float, default=PromoteConfig().max_perplexity_increase,
                   help="the perplexity rise a promotion allows (default: promote.max_perplexity_increase's default)")
    p.add_argument("--json", type=Path, help="also write the report here")
    args = p.parse_args(argv)
    try:
        report = compare(load_run(args.run, args.stem), load_run(args.reference, args.stem), args.method, args.gate)
    except (FileNotFoundError, ValueError) as err:
        p.error(str(err))
    return emit(markdown(report, (args.run.name, args.reference.name)), report, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
