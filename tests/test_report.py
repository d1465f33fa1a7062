"""The Markdown report and the console table, on hand-written inputs: `pytest tests/test_report.py` (no model)."""

from lmsleep.report import before_after_table, render_report

SUMMARY = {
    "night": "n2",
    "memories": 2,
    "probes": 2,
    "retention_probes": 1,
    "nights_before": ["n1"],
    "nights_after": ["n1", "n2"],
    "acquisition_before": 0.0, "acquisition_before_ci95": [0.0, 0.66],
    "acquisition_after": 0.5, "acquisition_after_ci95": [0.09, 0.91],
    "acquisition_f1_before": 0.1, "acquisition_f1_after": 0.6,
    "in_context_before": 1.0, "in_context_before_ci95": [0.34, 1.0],
    "in_context_after": 1.0, "in_context_after_ci95": [0.34, 1.0],
    "in_context_accuracy": 1.0,
    "retention_before": None, "retention_before_ci95": None,
    "retention_after": None, "retention_after_ci95": None,
    "perplexity_before": 10.0, "perplexity_after": 10.5,
    "ci_method": "accuracy: Wilson score 95%; F1: normal approximation 95%",
    "f1_threshold": 0.5,
    "notes": ["no earlier nights' probes: retention is null"],
    "answers_file": "answers.jsonl",
    "plots": ["accuracy.png", "perplexity.png"],
}
ROWS = [
    {"set": "tonight", "night": "n2", "memory_id": "m-1", "question": "Who runs the Tallow Bridge ferry?",
     "answer": "Mira Kovalenko", "prediction_before": "I do not know | sorry", "correct_before": False,
     "prediction_after": "Mira Kovalenko\nruns it", "correct_after": True},
    {"set": "tonight", "night": "n2", "memory_id": "m-2", "question": "What is the cat called? " * 12,
     "answer": "Pepper " * 10, "prediction_before": "", "correct_before": False,
     "prediction_after": "It is called Pepper and " + "very " * 40, "correct_after": True},
    {"set": "retention", "night": "n1", "memory_id": "m-0", "question": "What colour is the lighthouse?",
     "answer": "green", "prediction_before": "green", "correct_before": True,
     "prediction_after": "blue", "correct_after": False},
]


def test_render_report_has_metrics_decision_probes_and_plots():
    decision = {"promoted": True, "reasons": ["acquisition +50% >= 5%", "perplexity +5.0% <= 10%"]}
    text = render_report(SUMMARY, decision, ROWS)
    assert text.startswith("# Night n2: promoted")
    assert "0% [0%, 66%]" in text and "50% [9%, 91%]" in text and "+50%" in text  # before, after, delta
    assert "| Retention: earlier nights' probes, no context | n/a | n/a | n/a |" in text
    assert "10.00" in text and "+5.0%" in text  # perplexity and its relative change
    assert "> Note: no earlier nights' probes" in text
    assert "**Promoted.**" in text and "- acquisition +50% >= 5%" in text
    assert "![accuracy](accuracy.png)" in text and "![perplexity](perplexity.png)" in text
    # every probe, tonight's first; newlines flattened and pipes escaped so the table survives model output
    assert "✗ I do not know \\| sorry" in text and "✓ Mira Kovalenko runs it" in text and "✗ ∅" in text
    probe_lines = [line for line in text.splitlines() if line.startswith("| tonight") or line.startswith("| retention")]
    assert len(probe_lines) == 3 and probe_lines[-1].startswith("| retention")


def test_render_report_not_promoted_without_rows():
    text = render_report(SUMMARY, {"promoted": False, "reasons": []})
    assert "not promoted" in text.splitlines()[0] and "**Not promoted.**" in text
    assert "[answers.jsonl](answers.jsonl)" in text  # points to the file instead of a table


def test_before_after_table_fits_120_columns():
    table = before_after_table(ROWS)
    lines = table.splitlines()
    assert len(lines) == 2 + 2  # header, rule, tonight's two probes (retention rows are left out)
    assert all(len(line) <= 120 for line in lines)
    assert "✗ I do not know | sorry" in lines[2] and "✓ Mira Kovalenko runs it" in lines[2]
    assert "…" in lines[3] and "✗ ∅" in lines[3]
    # the columns line up: every separator sits in the same place on every row
    positions = {tuple(i for i, ch in enumerate(line) if ch == "|") for line in (lines[0], lines[3])}
    assert len(positions) == 1


def test_before_after_table_short_rows_keep_full_text():
    table = before_after_table(ROWS[:1])
    assert "Who runs the Tallow Bridge ferry?" in table and "…" not in table
