"""A night's human-readable report: Markdown for reports/<id>/report.md and a console table of tonight's probes.

Written after `lmsleep promote --night <id>` has decided; the inputs are reports/<id>/eval.json (from `evaluate`),
the decision {"promoted": bool, "reasons": [str]} and reports/<id>/answers.jsonl. Pure functions: no files, no models.
"""

from __future__ import annotations

from typing import Any

HEADLINES = (
    ("acquisition", "Acquisition: tonight's probes, no memory in context"),
    ("in_context", "In context: tonight's probes, memory given (before = ceiling)"),
    ("retention", "Retention: earlier nights' probes, no context"),
)
CONSOLE_WIDTH = 120


def _pct(value: float | None, ci: list[float] | None = None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0%}" + (f" [{ci[0]:.0%}, {ci[1]:.0%}]" if ci else "")


def _delta(before: float | None, after: float | None, fmt: str) -> str:
    return "n/a" if before is None or after is None else format(after - before, fmt)


def _mark(row: dict[str, Any], when: str) -> str:
    return "✓" if row.get(f"correct_{when}") else "✗"


def _oneline(text: Any) -> str:
    """Model output may hold newlines and runs of spaces; a table cell may not."""
    return " ".join(str(text if text is not None else "").split())


def _cell(text: Any) -> str:
    """Table-safe Markdown: one line, pipes escaped, an empty prediction shown as ∅ rather than a blank cell."""
    return _oneline(text).replace("|", "\\|") or "∅"


def render_report(
    eval_summary: dict[str, Any], decision: dict[str, Any], answers_rows: list[dict[str, Any]] | None = None
) -> str:
    """Markdown: headline metrics before/after with 95% intervals, the decision and its reasons, every probe, plots.

    `answers_rows` are the rows of answers.jsonl; without them the probe table is replaced by a pointer to the file.
    """
    s = eval_summary
    night = s.get("night", "?")
    verdict = "promoted: the challenger becomes champion" if decision.get("promoted") else "not promoted"
    lines = [f"# Night {night}: {verdict}", ""]
    lines += [
        f"{s.get('memories', 0)} memories, {s.get('probes', 0)} probes tonight, "
        f"{s.get('retention_probes', 0)} retention probes from earlier nights. "
        f"Model before: nights {s.get('nights_before', [])}; after: nights {s.get('nights_after', [])}.",
        "",
        "## Headline metrics",
        "",
        "| metric | before | after | Δ accuracy | mean F1 before → after |",
        "|---|---|---|---|---|",
    ]
    for key, title in HEADLINES:
        before, after = s.get(f"{key}_before"), s.get(f"{key}_after")
        f1 = f"{_pct(s.get(f'{key}_f1_before'))} → {_pct(s.get(f'{key}_f1_after'))}"
        lines.append(
            f"| {title} | {_pct(before, s.get(f'{key}_before_ci95'))} | {_pct(after, s.get(f'{key}_after_ci95'))} "
            f"| {_delta(before, after, '+.0%')} | {f1} |"
        )
    ppl_before, ppl_after = s.get("perplexity_before"), s.get("perplexity_after")
    ppl = [("n/a" if v is None else f"{v:.2f}") for v in (ppl_before, ppl_after)]
    relative = "n/a" if not ppl_before or ppl_after is None else f"{ppl_after / ppl_before - 1:+.1%}"
    lines += [f"| Reference perplexity (lower is better) | {ppl[0]} | {ppl[1]} | {relative} (relative) | |", ""]
    lines += [f"Intervals: {s.get('ci_method', '95%')}. Correct = answer contained as whole words, "
              f"or token F1 ≥ {s.get('f1_threshold', '?')}.", ""]
    notes = [f"> Note: {note}" for note in s.get("notes", [])]
    lines += notes + ([""] if notes else [])
    lines += ["## Decision", "", f"**{'Promoted' if decision.get('promoted') else 'Not promoted'}.**", ""]
    lines += [f"- {reason}" for reason in decision.get("reasons", [])] or ["- (no reasons given)"]

    lines += ["", "## Probes", ""]
    if answers_rows is None:
        lines.append(f"Every probe and prediction: [{s.get('answers_file', 'answers.jsonl')}]"
                     f"({s.get('answers_file', 'answers.jsonl')}).")
    elif not answers_rows:
        lines.append("No probes tonight or from earlier nights.")
    else:
        lines += [
            "Answers without the memory in context, before and after sleep.",
            "",
            "| set | night | question | expected | before | after |",
            "|---|---|---|---|---|---|",
        ]
        for row in sorted(answers_rows, key=lambda r: r.get("set") != "tonight"):  # tonight first, order kept
            lines.append(
                f"| {row.get('set', '')} | {_cell(row.get('night'))} "
                f"| {_cell(row['question'])} | {_cell(row['answer'])} "
                f"| {_mark(row, 'before')} {_cell(row.get('prediction_before'))} "
                f"| {_mark(row, 'after')} {_cell(row.get('prediction_after'))} |"
            )
    lines += ["", "## Plots", ""]
    lines += [f"![{name[:-4]}]({name})" for name in s.get("plots", [])] or ["(none)"]
    return "\n".join(lines) + "\n"


def _clip(text: Any, width: int) -> str:
    text = _oneline(text)
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def before_after_table(answers_rows: list[dict[str, Any]], width: int = CONSOLE_WIDTH) -> str:
    """Plain-text table of tonight's probes: question | expected | before | after (both without the memory).

    Each answer is marked ✓/✗; cells are clipped with … so that no line is wider than `width` columns.
    """
    rows = [r for r in answers_rows if r.get("set", "tonight") == "tonight"]
    header = ["question", "expected", "before (no memory)", "after (no memory)"]
    cells = [header] + [
        [
            _oneline(r["question"]),
            _oneline(r["answer"]),
            f"{_mark(r, 'before')} {_oneline(r.get('prediction_before')) or '∅'}",
            f"{_mark(r, 'after')} {_oneline(r.get('prediction_after')) or '∅'}",
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(4)]
    budget = width - 3 * len(" | ")
    # Shrink the widest column one character at a time until the row fits: short columns keep their full text.
    while sum(widths) > budget:
        widest = widths.index(max(widths))
        widths[widest] -= 1
    lines = [" | ".join(_clip(c, w).ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
