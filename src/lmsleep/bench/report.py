"""A benchmark result as a Markdown table, PNG plots and a flat W&B summary. Pure functions of the result dict.

Called by `lmsleep.bench.harness.run` (`lmsleep bench <name> ...`); redraw from a saved result with

    python -c "import json; from lmsleep.bench import report as r; d = json.load(open('bench/results/squad.json')); \
r.write_plots(d, __import__('pathlib').Path('/tmp'), 'squad')"
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

METHOD_COLOURS = {"base": "#9aa5b1", "icl": "#e0a030", "sft": "#7a9e7e", "sft_replay": "#4f7a55",
                  "context_distill_offpolicy": "#a07ac0", "sleep_ks": "#2f6fb0"}


def _pct(stat: dict[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    ci = stat.get("ci95")
    return f"{stat['mean']:.1%}" + (f" [{ci[0]:.1%}, {ci[1]:.1%}]" if ci else "")


def _num(stat: dict[str, Any] | None, fmt: str) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    ci = stat.get("ci95")
    return format(stat["mean"], fmt) + (f" [{format(ci[0], fmt)}, {format(ci[1], fmt)}]" if ci else "")


def markdown(result: dict[str, Any], stem: str, headline_lines: list[str]) -> str:
    seeds = len(result["seeds"])
    lines = [f"# Benchmark `{result['benchmark']}`", "",
             f"Model {result['model']} ({result['parameters'] / 1e6:.1f}M parameters), {seeds} seed(s), "
             f"limit {result['limit']}, {'sequential' if result['sequential'] else 'independent'} nights, "
             f"{len(result['tasks'])} task(s), {result['wall_s']} s. Command: `{result.get('command') or '?'}`.", ""]
    if headline_lines:
        lines += headline_lines + [""]
    lines += ["## Accuracy without the memory in context (icl: with it)", "",
              "| group | method | accuracy | gain over base | gap closed | F1 | perplexity (drift) | probes |",
              "|---|---|---|---|---|---|---|---|"]
    for group, per_method in result["aggregate"].items():
        for method, e in per_method.items():
            gap = "n/a" if e.get("gap_closed") is None else f"{e['gap_closed']:.0%}"
            lines.append(f"| {group} | {method} | {_pct(e['accuracy'])} | {_num(e.get('gain_over_base'), '+.1%')} "
                         f"| {gap} | {_pct(e['f1'])} | {_num(e['perplexity'], '.2f')} "
                         f"({_num(e['perplexity_drift'], '+.1%')}) | {e['probes']} |")
    ci_methods = sorted({e["accuracy"]["ci_method"] for g in result["aggregate"].values() for e in g.values()
                         if e["accuracy"]["ci_method"]})
    lines += ["", f"Intervals: 95%, {'; '.join(ci_methods) or 'none'} (lmsleep.bench.metrics). Gap closed = (method "
              "- base) / (icl - base) on means. " + (result.get("grading_note") or "Correct = expected answer contained, or "
              f"token F1 >= {result['evaluate_config']['f1_threshold']} (lmsleep.grading).") + " Perplexity: reference text, base "
              f"{result['reference_perplexity_base']:.2f}.", ""]
    lines += paired_markdown(result.get("paired"))
    if result.get("retention"):
        lines += ["## Retention (sequential)", "", "| method | ACC | BWT | FWT | forgetting | perplexity drift |",
                  "|---|---|---|---|---|---|"]
        for method, r in result["retention"]["methods"].items():
            lines.append(f"| {method} | {_pct(r['acc'])} | {_num(r['bwt'], '+.1%')} | {_num(r['fwt'], '+.1%')} "
                         f"| {_num(r['forgetting'], '.1%')} | {_num(r['perplexity_drift'], '+.1%')} |")
        lines.append("")
    lines += ["## Files", "", f"`{stem}.json` (everything), `{stem}_answers.jsonl` (every prediction), "
              f"`{stem}_train_texts.jsonl` (everything trained on).", ""]
    lines += [f"![{p[:-4]}]({p})" for p in result.get("plots", [])]
    return "\n".join(lines) + "\n"


def paired_markdown(paired: dict[str, Any] | None) -> list[str]:
    """The seed-by-seed comparison table (lmsleep.bench.harness.paired); nothing when no pair ran."""
    if not paired or not paired.get("pairs"):
        return []
    lines = ["## Paired differences (same data and seeds; 95% t-interval of the per-seed differences)", "",
             "| on | method − reference | difference | per seed | beyond 0 |", "|---|---|---|---|---|"]
    tables = [(f"{group} accuracy", rows) for group, rows in paired["accuracy"].items()]
    tables += [(f"{group} F1", rows) for group, rows in paired.get("f1", {}).items()]  # saved runs may have none
    tables += [("ACC (sequential)", paired["acc"])] if paired.get("acc") else []
    for on, rows in tables:
        for r in rows:
            seeds = ", ".join("n/a" if v is None else f"{v:+.1%}" for v in r["per_seed"])
            lines.append(f"| {on} | {r['method']} − {r['reference']} | {_num(r, '+.1%')} | {seeds} "
                         f"| {r['beyond_zero'] or 'no'} |")
    return lines + ["", "Beyond 0: the interval of the differences excludes 0 (a weaker test than two separate "
                        "intervals that do not overlap, which the targets use; lmsleep.bench.metrics).", ""]


def write_plots(result: dict[str, Any], out: Path, stem: str) -> list[str]:
    """<stem>.png (accuracy per group and method, 95% intervals) and <stem>_retention.png (R, sequential only)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt

    groups = list(result["aggregate"])
    methods = result["methods"]
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups) * len(methods) / 2), 4))
    for k, method in enumerate(methods):
        for g, group in enumerate(groups):
            stat = result["aggregate"][group][method]["accuracy"]
            if stat["mean"] is None:
                continue
            x = g - 0.4 + width * (k + 0.5)
            ci = stat["ci95"] or [stat["mean"], stat["mean"]]
            err = [[max(0.0, stat["mean"] - ci[0])], [max(0.0, ci[1] - stat["mean"])]]
            ax.bar(x, stat["mean"], width, yerr=err, capsize=3, color=METHOD_COLOURS.get(method, f"C{k}"),
                   label=method if g == 0 else None)
            ax.text(x, min(1.05, ci[1] + 0.02), f"{stat['mean']:.0%}", ha="center", fontsize=7)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylim(0, 1.3)  # headroom above 100% for the legend, so it never covers a bar
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("accuracy, 95% CI (icl: memory in context)")
    ax.set_title(f"{result['benchmark']}: {result['model']}, {len(result['seeds'])} seed(s)")
    ax.legend(fontsize=8, loc="upper center", ncol=min(len(methods), 3))
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=120)
    plt.close(fig)
    plots = [f"{stem}.png"]

    if result.get("retention"):
        names, per_method = result["retention"]["tasks"], result["retention"]["methods"]
        fig, axes = plt.subplots(1, len(per_method), figsize=(3.2 * len(per_method), 3.2), squeeze=False)
        for ax, (method, r) in zip(axes[0], per_method.items()):
            ax.imshow(r["R_mean"], vmin=0, vmax=1, cmap="Blues")
            for i, row in enumerate(r["R_mean"]):
                for j, value in enumerate(row):
                    ax.text(j, i, f"{value:.0%}", ha="center", va="center", fontsize=7)
            ax.set_title(method, fontsize=9)
            ax.set_xticks(range(len(names)), names, rotation=45, fontsize=7)
            ax.set_yticks(range(len(names)), names, fontsize=7)
            ax.set_xlabel("task probed")
        axes[0][0].set_ylabel("after training through")
        fig.tight_layout()
        fig.savefig(out / f"{stem}_retention.png", dpi=120)
        plt.close(fig)
        plots.append(f"{stem}_retention.png")
    return plots


def flat_summary(result: dict[str, Any]) -> dict[str, Any]:
    """Scalars for W&B's run summary: <group>/<method>/<metric> means, retention means, the headline's scalars."""
    flat: dict[str, Any] = {"wall_s": result["wall_s"]}
    for group, per_method in result["aggregate"].items():
        for method, e in per_method.items():
            for key in ("accuracy", "f1", "perplexity", "perplexity_drift", "gain_over_base"):
                if e.get(key):
                    flat[f"{group}/{method}/{key}"] = e[key]["mean"]
            flat[f"{group}/{method}/gap_closed"] = e.get("gap_closed")
    for method, r in ((result.get("retention") or {}).get("methods") or {}).items():
        for key in ("acc", "bwt", "fwt", "forgetting", "perplexity_drift"):
            flat[f"retention/{method}/{key}"] = r[key]["mean"]
    for key, value in (result.get("headline") or {}).items():
        if isinstance(value, (int, float, bool, str)) or value is None:
            flat[f"headline/{key}"] = value
    return flat
