"""lmsleep.bench.coverage: which probes' answers reached a method's training, and how often those are recalled."""

import json

import pytest

from lmsleep.bench.coverage import fact_coverage, main


def _answer(question, answer, memory, correct, method="sleep_ks", seed=0):
    return {"method": method, "seed": seed, "question": question, "answer": answer, "memory_id": memory,
            "correct": correct}


ANSWERS = [
    _answer("Which town?", "Otrar", "m1", True),
    _answer("When founded?", "1873", "m1", False),
    _answer("What colour?", "blue", "m2", False),  # "blue" is only in m1's training: not covered
    _answer("What art?", "art", "m2", False),  # "partner" does not contain the word "art"
    _answer("Which town?", "Otrar", "m1", True, seed=1),  # seed 1 kept no training texts: left out
    _answer("Which town?", "Otrar", "m1", True, method="icl"),
    _answer("When founded?", "1873", "m1", True, method="icl"),
]
TEXTS = [
    {"method": "sleep_ks", "seed": 0, "memory_id": "m1", "kind": "question", "completion": "It was Otrar."},
    {"method": "sleep_ks", "seed": 0, "memory_id": "m1", "kind": "continuation", "completion": "in 1873, blue lamps"},
    {"method": "sleep_ks", "seed": 0, "memory_id": "m2", "kind": "continuation", "completion": "his partner left"},
    {"method": "sleep_ks", "seed": 0, "memory_id": "", "kind": "question", "source": "replay:n1",
     "completion": "blue art"},  # a replayed prompt belongs to no memory of tonight
    {"method": "sft", "seed": 0, "memory_id": "m2", "text": "the blue art"},  # another method's training
]


def test_coverage_counts_answers_found_in_the_methods_own_completions():
    report = fact_coverage(ANSWERS, TEXTS, "sleep_ks")
    assert list(report["seeds"]) == ["0"]
    seed = report["seeds"]["0"]
    assert (seed["probes"], seed["covered"], seed["correct_when_covered"]) == (4, 2, 1)
    assert (seed["not_covered"], seed["correct_when_not_covered"]) == (2, 0)
    assert (seed["covered_and_icl_correct"], seed["correct_when_covered_and_icl_correct"]) == (2, 1)
    assert seed["by_kinds"] == {"continuation": {"probes": 1, "correct": 0}, "question": {"probes": 1, "correct": 1},
                                "not covered": {"probes": 2, "correct": 0}}
    sft = fact_coverage(ANSWERS + [_answer("What colour?", "blue", "m2", True, method="sft")], TEXTS, "sft")
    assert sft["seeds"]["0"]["covered"] == 1 and sft["seeds"]["0"]["correct_when_covered"] == 1  # a text row
    with pytest.raises(ValueError, match="no answers"):
        fact_coverage(ANSWERS, TEXTS, "opsd")


def test_coverage_command_prints_the_table_and_writes_json(tmp_path, capsys):
    (tmp_path / "seed_quality_answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ANSWERS))
    (tmp_path / "seed_quality_train_texts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TEXTS))
    assert main([str(tmp_path), "--json", str(tmp_path / "coverage.json")]) == 0
    assert "| 0 | 4 | 2 | 1 / 2 | 0 / 2 | 1 / 2 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "coverage.json").read_text())["seeds"]["0"]["covered"] == 2
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing")])


def test_coverage_command_reads_a_stopped_runs_partial_files(tmp_path, capsys):
    (tmp_path / "seed_quality_answers.partial.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ANSWERS))
    (tmp_path / "seed_quality_train_texts.partial.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TEXTS))
    assert main([str(tmp_path)]) == 0
    assert "| 0 | 4 | 2 | 1 / 2 | 0 / 2 | 1 / 2 |" in capsys.readouterr().out
    (tmp_path / "seed_quality_answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ANSWERS[:1]))
    (tmp_path / "seed_quality_train_texts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TEXTS))
    assert main([str(tmp_path)]) == 0  # a finished run's files win over partial ones
    assert "| 0 | 1 | 1 | 1 / 1 |" in capsys.readouterr().out
