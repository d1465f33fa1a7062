"""The protocol runners for what does not fit this box: `arc` (SEAL's few-shot ARC) and `math` (the paper's math
table). Grid serialisation, parsing and exact-match grading; final-answer extraction and matching; data loading and
clear errors; and --limit'ed runs end to end on the tiny model through harness.run (and the CLI) on small fixtures,
with the probe-leak audit over what was trained on. The real SEAL subsets are read when ../shared/data is there."""

import json
from pathlib import Path

import pytest

from lmsleep.bench import harness
from lmsleep.bench.arc import ArcBenchmark, grid_text, parse_grid
from lmsleep.bench.math import MathBenchmark, answers_match, final_answer, last_boxed
from lmsleep.bench.squad import shared_data
from lmsleep.cli import main
from lmsleep.config import Params, load_params, parse_overrides

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

FAST = ["seed.epochs=1", "seed.ks_steps=2", "seed.ks_max_new_tokens=6", "seed.ks_expert_rank=4",
        "seed.ks_prompts_per_memory=2", "seed.ks_question_share=0.5", "evaluate.max_new_tokens=4",
        "seed.ks_anchor_prompts=2"]
REAL_ARC = shared_data() / "arc"  # ../shared/data, or LMSLEEP_SHARED_DATA (a worktree elsewhere)


@pytest.fixture(scope="module")
def ws(make_tiny_workspace):
    return make_tiny_workspace().ws


def fast_params(ws) -> Params:
    return load_params(ws.root / "params.yaml", parse_overrides(FAST))


def trained_rows(out: Path, stem: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"{stem}_train_texts.jsonl").read_text().splitlines()]


def answers(out: Path, stem: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"{stem}_answers.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- ARC

SWAP = {"train": [{"input": [[1, 2], [2, 1]], "output": [[2, 1], [1, 2]]},
                  {"input": [[1, 1], [0, 2]], "output": [[2, 2], [0, 1]]}],
        "test": [{"input": [[2, 0], [1, 1]]}]}
FLIP = {"train": [{"input": [[3, 0, 0]], "output": [[0, 0, 3]]}, {"input": [[4, 5, 0]], "output": [[0, 5, 4]]}],
        "test": [{"input": [[6, 7, 0]]}, {"input": [[0, 8, 9]]}]}


@pytest.fixture(scope="module")
def arc_folder(tmp_path_factory):
    """Two tiny ARC tasks in SEAL's filtered-file layout: colour swap 1<->2 and a horizontal flip (two tests)."""
    folder = tmp_path_factory.mktemp("arc")
    (folder / "arc-agi_evaluation_challenges_filtered_1B_eval_set.json").write_text(
        json.dumps({"swap0001": SWAP, "flip0002": FLIP}))
    (folder / "arc-agi_evaluation_solutions_filtered_1B_eval_set.json").write_text(
        json.dumps({"swap0001": [[[1, 0], [2, 2]]], "flip0002": [[[0, 7, 6]], [[9, 8, 0]]]}))
    return folder


def test_grids_serialise_parse_and_grade_exactly():
    assert grid_text([[1, 0], [2, 2]]) == "1 0\n2 2"
    assert parse_grid("Output:\n```\n1 0\n2 2\n```\nthat is all") == [[1, 0], [2, 2]]
    assert parse_grid("no grid here") is None
    bench, params, answer = ArcBenchmark(), Params(), "1 0\n2 2"
    assert bench.grade("Here:\n1 0\n2 2", answer, params) == {"correct": True, "f1": 1.0, "parsed": True}
    partial = bench.grade("1 0\n2 1", answer, params)
    assert partial["correct"] is False and partial["f1"] == pytest.approx(0.75)
    assert bench.grade("1 0 0\n2 2 2", answer, params)["f1"] == 0.0  # wrong shape: no credit
    assert bench.grade("1 0", answer, params)["correct"] is False  # a cut answer
    assert bench.grade("nothing", answer, params) == {"correct": False, "f1": 0.0, "parsed": False}


def test_arc_fixture_loads_as_one_night_per_task(arc_folder):
    tasks = ArcBenchmark(data=str(arc_folder)).load(None)
    assert [t.name for t in tasks] == ["arc-swap0001", "arc-flip0002"]
    assert {t.group for t in tasks} == {"arc-evaluation"}
    flip = tasks[1].memories[0]
    assert "Example 2\nInput:\n4 5 0\nOutput:\n0 5 4" in flip["text"]
    assert [p["answer"] for p in flip["probes"]] == ["0 7 6", "9 8 0"]
    for task in tasks:  # the held-out test input is in the question, never in the memory
        for probe in task.memories[0]["probes"]:
            test_input = probe["question"].split("Input:\n", 1)[1]
            assert test_input not in task.memories[0]["text"] and probe["answer"] not in task.memories[0]["text"]
    assert len(ArcBenchmark(data=str(arc_folder)).load(1)) == 1
    with pytest.raises(FileNotFoundError, match="arc-agi_training_challenges"):
        ArcBenchmark(data=str(arc_folder), split="training").load(None)
    with pytest.raises(ValueError, match="split must be"):
        ArcBenchmark(split="test")


@pytest.mark.skipif(not REAL_ARC.exists(), reason="../shared/data/arc is not next to the repo")
def test_real_seal_subsets_load():
    evaluation = ArcBenchmark(data=str(REAL_ARC)).load(None)
    training = ArcBenchmark(data=str(REAL_ARC), split="training").load(None)
    assert len(evaluation) == 10 and len(training) == 12
    for task in evaluation + training:
        for probe in task.memories[0]["probes"]:
            assert parse_grid(probe["answer"]) is not None
            assert probe["question"].split("Input:\n", 1)[1] not in task.memories[0]["text"]


def test_arc_limited_run_on_the_tiny_model(ws, arc_folder, tmp_path, capsys):
    methods = ["base", "icl", "sft", "sleep_ks"]
    result = harness.run(ArcBenchmark(data=str(arc_folder)), fast_params(ws), ws, seeds=1, methods=methods,
                         out_dir=tmp_path, command="test arc")
    assert "evaluate.max_new_tokens=4 is shorter than the longest answer grid" in capsys.readouterr().out
    assert [t["probes"] for t in result["tasks"]] == [1, 2]
    entry = result["aggregate"]["arc-evaluation"]
    assert set(entry) == set(methods) and all(e["probes"] == 3 for e in entry.values())
    assert set(result["headline"]["arc-evaluation"]["sft"]) == {"exact_match", "ci95", "cell_accuracy", "probes"}
    rows = answers(tmp_path, "arc")
    assert all({"correct", "f1", "parsed"} <= set(a) for a in rows)
    assert all(a["in_context"] == (a["method"] == "icl") for a in rows)
    trained = trained_rows(tmp_path, "arc")
    assert {r["method"] for r in trained} == {"sft", "sleep_ks"}
    for row in trained:  # neither the probe question nor its test input grid was trained on
        text = " ".join(str(row.get(k, "")) for k in ("text", "prompt", "completion"))
        for a in rows:
            assert a["question"] not in text and a["question"].split("Input:\n", 1)[1] not in text


# ---------------------------------------------------------------- math

THREE = [
    {"problem": "What is 17 + 25?", "solution": "Add the tens and the units: 17 + 25 = 42. \\boxed{42}",
     "answer": "42"},
    {"problem": "Simplify 6/8.", "solution": "Divide both by 2: \\boxed{\\frac{3}{4}}"},  # answer from the box
    {"problem": "How many sides has a hexagon?", "solution": "A hexagon has six sides.", "answer": "6"},
]


@pytest.fixture
def three(tmp_path) -> Path:
    path = tmp_path / "three.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in THREE) + "\n")
    return path


def test_final_answers_are_extracted_and_normalised():
    assert last_boxed("a \\boxed{1} then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("cut off \\boxed{\\frac{1}{") is None
    assert final_answer("so x is 3, then 12.5") == "12.5" and final_answer("none") is None
    for prediction, reference, expected in [
        ("\\boxed{\\dfrac{3}{4}}", "3/4", True), ("it is 0.75", "\\frac{3}{4}", True),
        ("The answer: 1,000.", "1000", True), ("$x = 5$", "5", True), ("\\boxed{x^2+1}", "x^2 + 1", True),
        ("\\boxed{12}", "13", False), ("no number", "3", False), ("\\boxed{-2}", "\\boxed{-2}", True),
        ("\\boxed{\\left( 1,2 \\right)}", "(1,2)", True),
    ]:
        assert answers_match(prediction, reference) is expected, (prediction, reference)
    graded = MathBenchmark().grade("so \\boxed{42}", "42", Params())
    assert graded == {"correct": True, "f1": 1.0, "extracted": "42"}


def test_math_data_split_and_errors(three, tmp_path):
    tasks = MathBenchmark(data=str(three)).load(None)  # default holdout: a quarter, at least one
    memories = tasks[0].memories
    assert [m["id"] for m in memories] == ["math-0000", "math-0001"]
    assert memories[1]["meta"]["answer"] == "\\frac{3}{4}"
    probes = [p for m in memories for p in m["probes"]]
    assert len(probes) == 1 and "hexagon" in probes[0]["question"] and probes[0]["answer"] == "6"
    assert all("hexagon" not in m["text"] for m in memories)
    with pytest.raises(ValueError, match="no data"):
        MathBenchmark().load(None)
    with pytest.raises(ValueError, match="leaves no training record"):
        MathBenchmark(data=str(three), holdout=3).load(None)
    leaky = tmp_path / "leaky.jsonl"
    leaky.write_text(json.dumps({"problem": "What is 17 + 25?", "answer": "42"}) + "\n")
    with pytest.raises(ValueError, match="also in the training data"):
        MathBenchmark(data=str(three), eval=str(leaky)).load(None)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "1 + 1?", "solution": "two"}) + "\n")
    with pytest.raises(ValueError, match="no 'answer'"):
        MathBenchmark(data=str(bad)).load(None)


def test_math_without_data_is_a_clear_cli_error(ws, capsys):
    assert main(["bench", "math", "--root", str(ws.root), "--model", "tiny", "--seeds", "1"]) == 2
    assert "no data" in capsys.readouterr().err


def test_math_limited_run_on_the_tiny_model(ws, three, tmp_path):
    out = tmp_path / "out"
    assert main(["bench", "math", "--seeds", "1", "--model", "tiny", "--root", str(ws.root), "--out", str(out),
                 "--methods", "base,icl,sft,sleep_ks", "--option", f"data={three}", "--option", "holdout=1",
                 *[a for kv in FAST for a in ("--set", kv)]]) == 0
    result = json.loads((out / "math.json").read_text())
    assert result["options"] == {"data": str(three), "eval": None, "holdout": 1}
    assert result["tasks"] == [{"name": "math", "group": "math", "memories": 2, "probes": 1}]
    assert set(result["headline"]) == {"base", "icl", "sft", "sleep_ks"}
    rows = answers(out, "math")
    assert len(rows) == 4 and all("extracted" in a and a["f1"] == float(a["correct"]) for a in rows)
    for row in trained_rows(out, "math"):
        text = " ".join(str(row.get(k, "")) for k in ("text", "prompt", "completion"))
        assert "hexagon" not in text, row
