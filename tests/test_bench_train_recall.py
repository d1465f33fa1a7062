"""bench/train_recall.py: what a training question teaches, how its recall is graded, and a tiny run end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "bench"))

from train_recall import recalled, y_facts  # noqa: E402


def test_a_training_answer_teaches_the_names_and_numbers_its_question_does_not_hold():
    question = "Who is the captain of the Grey Heron?"
    assert y_facts(question, "The captain of the Grey Heron is Mira Kovalenko.") == ["Mira Kovalenko"]
    assert y_facts("When was the guild founded?", "The guild was founded in 1873 by Tobiah Quennell.") == [
        "1873", "Tobiah Quennell"]
    assert y_facts(question, "The Grey Heron has a captain.") == []  # restates the question: teaches nothing


def test_recall_needs_every_fact_as_whole_words():
    facts = ["Mira Kovalenko", "1873"]
    assert recalled("mira kovalenko, since 1873", facts)
    assert not recalled("Mira Kovalenko", facts)
    assert not recalled("Mira Kovalenkova in 18730", facts)
    assert not recalled("anything", [])


def test_tiny_train_recall_run_writes_its_json(tmp_path: Path) -> None:
    out = tmp_path / "train_recall.json"
    run = subprocess.run([sys.executable, str(PROJECT / "bench" / "train_recall.py"), "--model", "tiny", "--seeds", "0",
                          "--set", "seed.ks_steps=2", "--out", str(out)], cwd=PROJECT, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["model"] == "tiny" and result["set"] == {"seed.ks_steps": 2}
    [seed] = result["runs"]
    assert seed["probes"] == len(seed["probe_rows"]) == 24
    assert seed["training_questions_with_facts"] == len(seed["train_rows"])
    assert all(row["facts"] for row in seed["train_rows"])  # a y without a fact of its own is not counted
    assert 0 <= seed["probe_accuracy"] <= 1 and seed["probes_covered"] <= 24
