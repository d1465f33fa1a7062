"""The `evaluate` stage: did tonight's consolidation put the memories into the weights, at what cost?

    lmsleep evaluate --night <id>

Reads tonight's accepted memories (data/nights/<id>/accepted.jsonl) and the challenger lineage
(models/nights/<id>/dream/lineage.json once the dream stage ran, else seed's models/nights/<id>/lineage.json; its
"parent" is the champion it started from). Both models, one after the other, answer held-out probes greedily:

- acquisition: tonight's probes WITHOUT the memory in context (what sleep is meant to raise);
- in-context:  tonight's probes WITH the memory in context (before model = the ceiling consolidation aims for);
- retention:   probes of the earlier nights the challenger has consolidated, without context (what must not fall);
- perplexity:  on the fixed reference text (general ability must not degrade).

Writes reports/<id>/eval.json (metrics; the `promote` stage decides from it), answers.jsonl (one row per probe, every
prediction) and accuracy.png / perplexity.png. Accuracies carry Wilson 95% intervals, mean F1 a normal-approximation
one.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import torch

from lmsleep import models
from lmsleep.config import EvaluateConfig, Params, Workspace
from lmsleep.errors import NightStopped
from lmsleep.generation import generate_answers, perplexity
from lmsleep.grading import grade, mean_ci95
from lmsleep.memory import probes_of, read_json, read_jsonl, write_json, write_jsonl
from lmsleep.prompts import question_messages

CONDITIONS = ("acquisition", "in_context", "retention")
PLOTS = ("accuracy.png", "perplexity.png")


# ---------------------------------------------------------------- inputs


def probe_rows(night: str, memories: list[dict[str, Any]], probe_set: str) -> list[dict[str, Any]]:
    """One row per probe, carrying the memory text it belongs to (a memory without probes adds no row)."""
    return [
        {"night": night, "memory_id": memory.get("id"), "set": probe_set, "context": memory["text"], **probe}
        for memory in memories
        for probe in probes_of(memory)
    ]


def retention_rows(ws: Workspace, earlier_nights: list[str], notes: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for night in earlier_nights:
        path = ws.night_data(night) / "accepted.jsonl"
        if not path.exists():  # data/nights is not versioned in git; a fresh checkout may lack old nights
            notes.append(f"earlier night {night}: {path} is missing, its probes are not in retention")
            continue
        rows += probe_rows(night, read_jsonl(path), "retention")
    return rows


def read_reference(ws: Workspace, cfg: EvaluateConfig) -> str:
    path = Path(ws.resolve(cfg.reference_text))
    if not path.exists():
        raise NightStopped(f"evaluate: reference text {path} not found (evaluate.reference_text); perplexity needs it")
    return path.read_text(encoding="utf-8")


# ---------------------------------------------------------------- measuring one model


def measure(
    ws: Workspace,
    lineage: dict[str, Any],
    label: str,
    tonight: list[dict[str, Any]],
    retention: list[dict[str, Any]],
    reference: str,
    cfg: EvaluateConfig,
) -> dict[str, Any]:
    """Load one lineage, take every measurement, free it: the two models never sit in memory together."""
    model, tokenizer = models.load_lineage(ws, lineage)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    total, _ = models.count_parameters(model)
    print(f"evaluate [{label}]: nights {lineage.get('nights', [])}, {total / 1e6:.2f}M parameters on {device}")

    def answer(rows: list[dict], with_memory: bool, desc: str) -> list[str]:
        messages = [question_messages(r["question"], r["context"] if with_memory else None) for r in rows]
        return generate_answers(model, tokenizer, messages, cfg.max_new_tokens, cfg.batch_size, desc=f"{label}: {desc}",
                                groups=[r["context"] for r in rows] if with_memory else None)  # each memory read once

    # Tonight's and earlier probes share the no-context prompt, so they go through generation as one batch stream.
    no_memory = answer(tonight + retention, False, "no memory")
    result = {
        "acquisition": no_memory[: len(tonight)],
        "retention": no_memory[len(tonight) :],
        "in_context": answer(tonight, True, "memory in context"),
        "perplexity": perplexity(model, tokenizer, reference, cfg.max_reference_tokens),
    }
    del model, tokenizer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


# ---------------------------------------------------------------- scoring and outputs


def score(rows: list[dict], predictions: dict[str, list[str]], condition: str, when: str, cfg: EvaluateConfig) -> None:
    """Grade one condition's predictions and write them into the probe rows as <field>_<when> columns."""
    chosen = [r for r in rows if (r["set"] == "retention") == (condition == "retention")]
    field = "" if condition != "in_context" else "in_context_"
    for row, prediction in zip(chosen, predictions[condition], strict=True):
        graded = grade(prediction, row["answer"], cfg.f1_threshold)
        row[f"prediction_{field}{when}"] = prediction
        row[f"correct_{field}{when}"] = graded["correct"]
        row[f"f1_{field}{when}"] = graded["f1"]


def summarise(rows: list[dict], condition: str, when: str) -> dict[str, Any]:
    """Accuracy and mean F1 with 95% intervals for one condition; nulls when the condition has no probes."""
    field = "" if condition != "in_context" else "in_context_"
    chosen = [r for r in rows if (r["set"] == "retention") == (condition == "retention")]
    out: dict[str, Any] = {}
    for metric, column in ((f"{condition}_{when}", "correct"), (f"{condition}_f1_{when}", "f1")):
        values = [r[f"{column}_{field}{when}"] for r in chosen]
        mean, low, high = mean_ci95(values, proportion=column == "correct") if values else (None, None, None)
        # F1 lives in [0, 1]: a normal-approximation bound outside it is clipped, not reported as -0.6%
        out[metric], out[f"{metric}_ci95"] = mean, (None if mean is None else [max(0.0, low), min(1.0, high)])
    return out


def plot(summary: dict[str, Any], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.38
    for offset, when, colour in ((-width / 2, "before", "#9aa5b1"), (width / 2, "after", "#2f6fb0")):
        label = when  # given to the first bar drawn, so the legend shows each model once
        for i, condition in enumerate(CONDITIONS):
            value, ci = summary[f"{condition}_{when}"], summary[f"{condition}_{when}_ci95"]
            if value is None:  # no probes for this condition: say so instead of drawing a zero
                ax.text(i + offset, 0.02, "n/a", ha="center", fontsize=8)
                continue
            err = [[max(0.0, value - ci[0])], [max(0.0, ci[1] - value)]]  # float noise at 0% or 100%
            ax.bar(i + offset, value, width, yerr=err, capsize=4, color=colour, label=label)
            ax.text(i + offset, ci[1] + 0.02, f"{value:.0%}", ha="center", fontsize=8)
            label = None
    names = ["acquisition\n(no memory)", "in context\n(memory given)", "retention\n(earlier nights)"]
    ax.set_xticks(range(len(CONDITIONS)), names)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("accuracy (95% Wilson CI)")
    ax.set_title(
        f"night {summary['night']}: before vs after sleep "
        f"({summary['probes']} probes, {summary['retention_probes']} retention probes)"
    )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4, 4))
    values = [summary["perplexity_before"], summary["perplexity_after"]]
    ax.bar(["before", "after"], values, color=["#9aa5b1", "#2f6fb0"])
    ax.set_ylabel("reference perplexity (lower is better)")
    ax.set_title(f"night {summary['night']}: general ability")
    fig.tight_layout()
    fig.savefig(out_dir / "perplexity.png", dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------- the stage


def run(params: Params, ws: Workspace) -> dict[str, Any]:
    """Measure champion (before) and challenger (after), write reports/<night>/, return the eval.json summary."""
    cfg, night = params.evaluate, params.night.id
    accepted = ws.night_data(night) / "accepted.jsonl"
    lineage_path = ws.challenger_lineage(night)  # the dream stage's once it ran, else seed's
    for path in (accepted, lineage_path):
        if not path.exists():
            raise NightStopped(f"evaluate: {path} not found; run the earlier stages for night {night} first")
    memories = read_jsonl(accepted)
    challenger = read_json(lineage_path)
    champion = challenger["parent"]
    earlier = [n for n in challenger["nights"] if n != night]

    notes: list[str] = []
    tonight = probe_rows(night, memories, "tonight")
    retention = retention_rows(ws, earlier, notes)
    if not tonight:
        notes.append("tonight's memories carry no probes: acquisition and in-context accuracy are null")
    if not retention:
        notes.append("no earlier nights' probes: retention is null")
    reference = read_reference(ws, cfg)
    print(
        f"evaluate: night {night}, {len(memories)} memories, {len(tonight)} probes, {len(retention)} retention probes "
        f"from {len(earlier)} earlier night(s), max_new_tokens={cfg.max_new_tokens}, batch_size={cfg.batch_size}"
    )

    rows = tonight + retention
    summary: dict[str, Any] = {
        "night": night,
        "nights_before": champion.get("nights", []),
        "nights_after": challenger["nights"],
    }
    for when, lineage in (("before", champion), ("after", challenger)):
        measured = measure(ws, lineage, when, tonight, retention, reference, cfg)
        summary[f"perplexity_{when}"] = measured["perplexity"]
        for condition in CONDITIONS:
            score(rows, measured, condition, when, cfg)
            summary.update(summarise(rows, condition, when))
    summary.update(
        in_context_accuracy=summary["in_context_before"],  # the ceiling: the champion reading the memory
        in_context_accuracy_ci95=summary["in_context_before_ci95"],
        probes=len(tonight),
        memories=len(memories),
        memories_with_probes=sum(1 for m in memories if probes_of(m)),
        retention_probes=len(retention),
        f1_threshold=cfg.f1_threshold,
        ci_method="accuracy: Wilson score 95%; F1: normal approximation 95%",
        notes=notes,
        answers_file="answers.jsonl",
        plots=list(PLOTS),
    )

    out_dir = ws.night_report(night)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "answers.jsonl", ({k: v for k, v in r.items() if k != "context"} for r in rows))
    write_json(out_dir / "eval.json", summary)  # first: a plotting failure must not lose the measurements
    plot(summary, out_dir)
    for note in notes:
        print(f"evaluate: note: {note}")
    print(f"evaluate: wrote {out_dir / 'eval.json'}")
    return summary
