"""lmsleep bench: --limit'ed runs of every benchmark on the tiny model (1 seed, a couple of steps), the outputs'
schema, the probe-leak property, a toy sequential benchmark's retention matrix, and method-name errors."""

import json
from pathlib import Path

import pytest
from tinyworld import memory, with_canaries

from lmsleep.bench import harness
from lmsleep.bench.harness import Benchmark, Task
from lmsleep.bench.quality import QualityBenchmark
from lmsleep.bench.squad import SquadBenchmark
from lmsleep.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# A night in seconds on the tiny model: one SFT epoch, two KS steps on short samples.
FAST = ["--set", "seed.epochs=1", "--set", "seed.ks_steps=2", "--set", "seed.ks_max_new_tokens=6",
        "--set", "seed.ks_expert_rank=4", "--set", "seed.ks_prompts_per_memory=2", "--set", "seed.ks_question_share=0.5",
        "--set", "evaluate.max_new_tokens=4", "--set", "seed.ks_anchor_prompts=2"]
# Dreaming at test size (as tinyworld.small_dream): every tested dream rewarded, so rehearsal and ReST-EM both run.
SMALL_DREAM = [f"--set=dream.{k}={v}" for k, v in {
    "kinds": "[continuation,qa]", "dreams_per_memory": 2, "max_new_tokens": 12, "tau_questions": 1, "tau_answers": 1,
    "max_trials": 4, "trial_steps": 1, "writer_steps": 2, "rehearsal_steps": 2, "reward_margin": -1e9}.items()]


@pytest.fixture(scope="module")
def ws(make_tiny_workspace):
    return make_tiny_workspace().ws


@pytest.fixture(scope="module")
def seal_fixture(tmp_path_factory):
    """A small file in the SEAL eval set's format (title, context, questions), so the benchmarks' tests need no
    ../shared/data (a fresh CI clone may not sit next to it); the real set is read the same way."""
    root = tmp_path_factory.mktemp("shared-data")
    records = [{"title": f"Harbour {i}", "context": f"The harbour of Varn{i} was built in 18{i}0 by Edda Moll{i}. "
                f"Its lighthouse keeper is called Brannoc{i}.",
                "questions": [{"question": f"Who built the harbour of Varn{i}?", "answer": f"Edda Moll{i}"},
                              {"question": f"Who keeps the lighthouse of Varn{i}?", "answer": f"Brannoc{i}"}]}
               for i in range(4)]
    (root / "squad_seal").mkdir()
    (root / "squad_seal" / "seal_eval200_base_val.json").write_text(json.dumps(records))
    return root


@pytest.fixture(autouse=True)
def shared_data(seal_fixture, monkeypatch):
    from lmsleep.bench.squad import seal_passages

    monkeypatch.setenv("LMSLEEP_SHARED_DATA", str(seal_fixture))
    seal_passages.cache_clear()
    yield
    seal_passages.cache_clear()


def check_outputs(out: Path, stem: str, groups: list[str], methods: list[str]) -> dict:
    result = json.loads((out / f"{stem}.json").read_text())
    for key in ("benchmark", "command", "model", "seeds", "limit", "methods", "tasks", "seed_config",
                "evaluate_config", "reference_perplexity_base", "aggregate", "scores", "steps", "headline", "plots",
                "wall_s"):
        assert key in result, key
    assert result["model"] == "tiny" and result["seeds"] == [0] and result["methods"] == methods
    assert set(result["aggregate"]) == set(groups)  # write_json sorts keys
    for group in groups:
        for method in methods:
            entry = result["aggregate"][group][method]
            assert 0.0 <= entry["accuracy"]["mean"] <= 1.0 and entry["probes"] > 0
            assert entry["accuracy"]["ci_method"].startswith("Wilson")  # one seed: Wilson over probes
            assert len(entry["accuracy"]["per_seed"]) == 1 and entry["perplexity"]["mean"] > 0
            assert "gain_over_base" in entry and "gap_closed" in entry
    markdown = (out / f"{stem}.md").read_text()
    assert all(f"| {m} |" in markdown for m in methods)
    assert result["plots"] and all((out / p).stat().st_size > 0 for p in result["plots"])
    answers = [json.loads(line) for line in (out / f"{stem}_answers.jsonl").read_text().splitlines()]
    assert {a["method"] for a in answers} == set(methods)
    assert all(a["in_context"] == (a["method"] == "icl") for a in answers)
    return result


def assert_no_probe_leak(out: Path, stem: str, trained_methods: set[str]) -> None:
    rows = [json.loads(line) for line in (out / f"{stem}_train_texts.jsonl").read_text().splitlines()]
    assert {r["method"] for r in rows} == trained_methods
    questions = {json.loads(line)["question"] for line in (out / f"{stem}_answers.jsonl").read_text().splitlines()}
    for row in rows:
        text = " ".join(str(row.get(k, "")) for k in ("text", "prompt", "completion"))
        assert "canary" not in text.lower(), row
        assert not any(q in text for q in questions), row


def test_quality_limited_run(ws, monkeypatch):
    monkeypatch.setattr(QualityBenchmark, "load", with_canaries(QualityBenchmark.load))
    assert main(["bench", "quality", "--seeds", "1", "--limit", "2", "--model", "tiny", "--root", str(ws.root),
                 *FAST]) == 0
    out = ws.root / "bench" / "results"
    result = check_outputs(out, "seed_quality", ["demo", "squad20"], ["base", "icl", "sft", "sleep_ks"])
    assert result["command"].startswith("lmsleep bench quality --seeds 1 --limit 2")
    assert [t["memories"] for t in result["tasks"]] == [2, 2]
    steps = {(s["method"], s["task"]): s for s in result["steps"]}
    assert steps[("sft", "demo")]["steps"] == 1 and steps[("sleep_ks", "demo")]["steps"] == 2
    dropped = steps[("sleep_ks", "demo")]["dropped"]  # counted by reason; answers from elsewhere are kept by default
    assert set(dropped) == {"invented", "off_sentence"} and dropped["invented"] >= 0 and dropped["off_sentence"] == 0
    for name in ("demo", "squad20"):
        s = result["headline"]["sets"][name]
        for role in ("before", "sft", "ks", "ceiling"):
            assert set(s[role]) == {"mean", "ci95", "per_seed", "ci_method", "ci95_probes_seed0"}
        assert "gap_closed_by_ks" in s and "ks_beats_sft_beyond_intervals" in s and "target_met" in s
    assert "Issue 3" in (out / "seed_quality.md").read_text() and "token F1 >= " in (out / "seed_quality.md").read_text()
    assert_no_probe_leak(out, "seed_quality", {"sft", "sleep_ks"})


def test_squad_limited_run_single_and_multi(ws, monkeypatch):
    monkeypatch.setattr(SquadBenchmark, "load", with_canaries(SquadBenchmark.load))
    methods = ["base", "icl", "sft", "context_distill_offpolicy", "sleep_ks"]
    assert main(["bench", "squad", "--seeds", "1", "--limit", "2", "--model", "tiny", "--root", str(ws.root),
                 "--out", "bench/squad-test", *FAST]) == 0
    out = ws.root / "bench" / "squad-test"
    result = check_outputs(out, "squad", ["single", "multi-2"], methods)
    assert [t["name"] for t in result["tasks"]] == ["single-squad-000", "single-squad-001", "multi2-night000"]
    assert set(result["headline"]) == {"single", "multi-2"}
    assert result["options"] == {"mode": "both", "passages_per_night": 0}
    assert_no_probe_leak(out, "squad", {"sft", "context_distill_offpolicy", "sleep_ks"})


def test_squad_default_is_a_subset_and_limit_zero_asks_for_every_passage():
    squad, quality = SquadBenchmark(), QualityBenchmark()
    assert harness.resolve_limit(squad, None) == squad.default_limit == 3  # the default run fits about an hour
    assert harness.resolve_limit(squad, 0) is None and harness.resolve_limit(squad, 7) == 7
    assert harness.resolve_limit(quality, None) is None  # the others' defaults are their whole sets
    with pytest.raises(ValueError, match="--limit must be >= 0"):
        harness.resolve_limit(squad, -1)


def test_squad_without_limit_runs_its_default_subset(ws):
    assert main(["bench", "squad", "--seeds", "1", "--model", "tiny", "--root", str(ws.root), "--option",
                 "mode=multi", "--methods", "base,sleep_ks", "--out", "bench/squad-default", *FAST]) == 0
    result = json.loads((ws.root / "bench" / "squad-default" / "squad.json").read_text())
    assert result["limit"] == 3  # of the fixture's 4 passages
    assert [(t["name"], t["memories"]) for t in result["tasks"]] == [("multi3-night000", 3)]


class ToyNights(Benchmark):
    """Two nights in sequence, two memories each: the retention path of the harness."""

    name = "toy"
    sequential = True

    def load(self, limit):
        return [Task("night-a", "nights", [memory(1), memory(2)]), Task("night-b", "nights", [memory(3), memory(4)])]


def test_sequential_benchmark_fills_the_accuracy_matrix_and_replays(ws, tmp_path):
    from lmsleep.config import load_params, parse_overrides

    params = load_params(ws.root / "params.yaml", parse_overrides(FAST[1::2]))
    methods = ["base", "icl", "sft_replay", "sleep_ks"]
    result = harness.run(ToyNights(), params, ws, seeds=2, methods=methods, out_dir=tmp_path)
    retention = result["retention"]
    assert retention["tasks"] == ["night-a", "night-b"] and set(retention["methods"]) == set(methods)
    for method, r in retention["methods"].items():
        assert len(r["R_per_seed"]) == 2 and all(len(R) == 2 and len(R[0]) == 2 for R in r["R_per_seed"])
        for key in ("acc", "bwt", "fwt", "forgetting", "perplexity_drift"):
            assert r[key]["n_seeds"] == 2, (method, key)
    base = retention["methods"]["base"]
    assert base["bwt"]["mean"] == 0 and base["fwt"]["mean"] == 0 and base["perplexity_drift"]["mean"] == 0
    assert [s["reused_from_seed"] for s in result["steps"] if s["method"] == "base" and s["seed"] == 1] == [0, 0]
    # the second night replays the first: sft mixes in its texts, KS its prompts (what the seed stage replays)
    steps = {(s["method"], s["seed"], s["after"]): s for s in result["steps"]}
    assert steps[("sleep_ks", 0, "night-a")]["replay_prompts"] == 0
    assert steps[("sleep_ks", 0, "night-b")]["replay_prompts"] > 0
    texts = [json.loads(line) for line in (tmp_path / "toy_train_texts.jsonl").read_text().splitlines()]
    assert any(t["method"] == "sft_replay" and t["task"] == "night-b" and t.get("source") == "replay" for t in texts)
    assert (tmp_path / "toy_retention.png").exists() and "Retention" in (tmp_path / "toy.md").read_text()
    # the product against the baseline that ran, seed by seed: on each group's accuracy and on the final ACC
    paired = result["paired"]
    assert paired["pairs"] == [["sleep_ks", "sft_replay"]]
    ks, sft = retention["methods"]["sleep_ks"]["acc"], retention["methods"]["sft_replay"]["acc"]
    [acc_row] = paired["acc"]
    assert acc_row["per_seed"] == pytest.approx([a - b for a, b in zip(ks["per_seed"], sft["per_seed"])])
    assert acc_row["n_seeds"] == 2 and acc_row["method"] == "sleep_ks" and acc_row["reference"] == "sft_replay"
    assert set(paired["f1"]) == set(paired["accuracy"]) == set(result["aggregate"])
    for score in ("accuracy", "f1"):
        for group, [row] in paired[score].items():
            ks, sft = (result["aggregate"][group][m][score]["per_seed"] for m in ("sleep_ks", "sft_replay"))
            assert row["per_seed"] == pytest.approx([a - b for a, b in zip(ks, sft)])
    report = (tmp_path / "toy.md").read_text()
    assert "| ACC (sequential) | sleep_ks − sft_replay |" in report
    assert all(f"| {group} F1 | sleep_ks − sft_replay |" in report for group in paired["f1"])
    # a saved result gives the same table
    saved = json.loads((tmp_path / "toy.json").read_text())
    assert harness.paired(saved, saved["methods"]) == saved["paired"]


def test_sequential_ks_can_read_earlier_nights_memories_again(ws, tmp_path):
    from lmsleep.config import load_params, parse_overrides

    overrides = FAST[1::2] + ["seed.ks_replay_prompts=4", "seed.ks_replay_memory_share=1.0"]
    params = load_params(ws.root / "params.yaml", parse_overrides(overrides))
    result = harness.run(ToyNights(), params, ws, seeds=1, methods=["sleep_ks"], out_dir=tmp_path)
    steps = {s["after"]: s for s in result["steps"]}
    assert steps["night-a"]["replay_read_prompts"] == 0  # nothing to replay on the first night
    assert steps["night-b"]["replay_read_prompts"] == steps["night-b"]["replay_prompts"] > 0
    assert_no_probe_leak(tmp_path, "toy", {"sleep_ks"})


def test_unknown_methods_and_benchmarks_are_clear_errors(ws, capsys):
    assert main(["bench", "quality", "--methods", "base,nope", "--root", str(ws.root), "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "unknown method(s) nope" in err and "known: base, icl, sft" in err and "opsd" in err
    assert main(["bench", "nope", "--root", str(ws.root)]) == 2
    assert "known: quality, squad, nights, languages, babi, arc, math" in capsys.readouterr().err
    assert main(["bench", "squad", "--option", "mode=sideways", "--root", str(ws.root)]) == 2


def test_quality_sets_option_picks_the_sets():
    from lmsleep.bench.harness import get_benchmark

    tasks = get_benchmark("quality", sets="demo").load(2)
    assert [t.name for t in tasks] == ["demo"] and len(tasks[0].memories) == 2
    with pytest.raises(ValueError, match="sets must be"):
        get_benchmark("quality", sets="demo,nope")


def test_quality_with_dreaming_and_an_ablation(ws, monkeypatch):
    """sleep_ks_dream runs the dream stage's own dream_and_rehearse after KS; the ablation turns one switch off."""
    monkeypatch.setattr(QualityBenchmark, "load", with_canaries(QualityBenchmark.load))
    methods = ["base", "sleep_ks_dream", "sleep_ks_dream-rest_em", "sleep_ks_dream+night_mix"]
    assert main(["bench", "quality", "--seeds", "1", "--limit", "2", "--model", "tiny", "--root", str(ws.root),
                 "--out", "bench/dream-test", "--option", "sets=demo", "--methods", ",".join(methods),
                 *FAST, *SMALL_DREAM]) == 0
    out = ws.root / "bench" / "dream-test"
    result = check_outputs(out, "seed_quality", ["demo"], methods)
    steps = {s["method"]: s for s in result["steps"]}
    for name in methods[1:]:
        assert steps[name]["made"] > 0 and steps[name]["dream_seconds"] > 0
        assert steps[name]["steps"] > 2  # KS steps plus rehearsal steps
    assert [steps[n]["rehearsal_night_share"] for n in methods[1:]] == [0.0, 0.0, 0.5]
    rows = [json.loads(line) for line in (out / "seed_quality_train_texts.jsonl").read_text().splitlines()]
    rehearsed = lambda m: {r["kind"] for r in rows if r["method"] == m and r.get("use") == "rehearsal"}  # noqa: E731
    assert rehearsed("sleep_ks_dream") and all(k.startswith("dream:") for k in rehearsed("sleep_ks_dream"))
    assert rehearsed("sleep_ks_dream+night_mix") & {"question", "continuation", "cloze"}  # tonight's prompts too
    assert_no_probe_leak(out, "seed_quality", set(methods[1:]))


def recording_chains(monkeypatch, real) -> list[tuple[str, int]]:
    """Runs `real` as the harness's run_chain and returns the list of (method, seed) it is called with."""
    ran = []

    def run_chain(bench, method, chain, seed, *args):
        ran.append((method.name, seed))
        return real(bench, method, chain, seed, *args)

    monkeypatch.setattr(harness, "run_chain", run_chain)
    return ran


def _same_as_a_straight_run(args: list[str], tmp_path, resumed: dict) -> list[dict]:
    """Run `args` uninterrupted into tmp_path/straight; the resumed run's scores and aggregate must equal its.
    Returns the resumed run's answers."""
    main([*args, "--out", str(tmp_path / "straight")])
    straight = json.loads((tmp_path / "straight" / "seed_quality.json").read_text())
    key = lambda s: (s["seed"], s["method"], s["task"])  # noqa: E731
    assert sorted(resumed["scores"], key=key) == sorted(straight["scores"], key=key)
    assert resumed["aggregate"] == straight["aggregate"]
    return [json.loads(line) for line in (tmp_path / "seed_quality_answers.jsonl").read_text().splitlines()]


def test_a_run_stopped_after_its_first_seed_keeps_that_seed(ws, monkeypatch, tmp_path, capsys):
    """Hours-long CPU runs: when seed 1 fails, <stem>.partial.json already holds seed 0's scores and aggregates."""
    real = harness.run_chain

    def stop_at_seed_1(bench, method, chain, seed, *args):
        if seed == 1:
            raise KeyboardInterrupt
        return real(bench, method, chain, seed, *args)

    monkeypatch.setattr(harness, "run_chain", stop_at_seed_1)
    with pytest.raises(KeyboardInterrupt):
        main(["bench", "quality", "--seeds", "2", "--limit", "1", "--model", "tiny", "--root", str(ws.root),
              "--out", str(tmp_path), "--option", "sets=demo", "--methods", "base,sft", *FAST])
    partial = json.loads((tmp_path / "seed_quality.partial.json").read_text())
    assert partial["complete"] is False and partial["seeds"] == [0]
    assert {s["seed"] for s in partial["scores"]} == {0} and {s["method"] for s in partial["scores"]} == {"base", "sft"}
    assert partial["aggregate"]["demo"]["sft"]["accuracy"]["per_seed"] == [
        next(s["accuracy"] for s in partial["scores"] if s["method"] == "sft")]
    assert not (tmp_path / "seed_quality.json").exists()
    assert (tmp_path / "seed_quality_answers.partial.jsonl").exists()

    # --resume with other settings refuses and leaves the stopped run as it was
    before = (tmp_path / "seed_quality.partial.json").read_bytes()
    assert main(["bench", "quality", "--seeds", "2", "--limit", "1", "--model", "tiny", "--root", str(ws.root),
                 "--out", str(tmp_path), "--option", "sets=demo", "--methods", "base", *FAST, "--resume"]) == 2
    assert "used other settings (methods)" in capsys.readouterr().err
    assert (tmp_path / "seed_quality.partial.json").read_bytes() == before

    # --resume runs seed 1 only, and gives what an uninterrupted run gives
    ran = recording_chains(monkeypatch, real)
    args = ["bench", "quality", "--seeds", "2", "--limit", "1", "--model", "tiny", "--root", str(ws.root),
            "--option", "sets=demo", "--methods", "base,sft", *FAST]
    assert main([*args, "--out", str(tmp_path), "--resume"]) == 0
    assert ran == [("sft", 1)]  # base is deterministic: seed 0's records stand for seed 1
    resumed = json.loads((tmp_path / "seed_quality.json").read_text())
    assert resumed["seeds"] == [0, 1] and resumed["resumed"]["from_seeds"] == [0]
    assert resumed["resumed"]["records_missing"] == []
    assert not list(tmp_path.glob("*.partial.*"))
    answers = _same_as_a_straight_run(args, tmp_path, resumed)
    assert {(a["seed"], a["method"]) for a in answers} == {(0, "base"), (0, "sft"), (1, "base"), (1, "sft")}


def test_a_run_stopped_within_a_seed_keeps_its_finished_methods(ws, monkeypatch, tmp_path):
    """One SmolLM2 night is up to an hour: a run stopped in a seed's second method resumes at that method, and gives
    what an uninterrupted run gives."""
    real = harness.run_chain

    def stop_at_sft(bench, method, chain, seed, *args):
        if method.name == "sft":
            raise KeyboardInterrupt
        return real(bench, method, chain, seed, *args)

    args = ["bench", "quality", "--seeds", "1", "--limit", "1", "--model", "tiny", "--root", str(ws.root),
            "--option", "sets=demo", "--methods", "base,sft", *FAST]
    monkeypatch.setattr(harness, "run_chain", stop_at_sft)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--out", str(tmp_path)])
    under_way = json.loads((tmp_path / "seed_quality.seed.partial.json").read_text())
    assert under_way["seed"] == 0 and under_way["finished_methods"] == ["base"]
    assert {s["method"] for s in under_way["records"]["scores"]} == {"base"}

    ran = recording_chains(monkeypatch, real)
    assert main([*args, "--out", str(tmp_path), "--resume"]) == 0
    assert ran == [("sft", 0)]  # base is not run again
    resumed = json.loads((tmp_path / "seed_quality.json").read_text())
    assert resumed["resumed"]["from_methods_of_seed"] == {"seed": 0, "methods": ["base"]}
    assert not list(tmp_path.glob("*.partial.*"))
    answers = _same_as_a_straight_run(args, tmp_path, resumed)
    assert {(a["seed"], a["method"]) for a in answers} == {(0, "base"), (0, "sft")}


def test_resume_adds_seeds_to_a_finished_run(ws, monkeypatch, tmp_path):
    args = ["bench", "quality", "--limit", "1", "--model", "tiny", "--root", str(ws.root), "--out", str(tmp_path),
            "--option", "sets=demo", "--methods", "base,sft", *FAST]
    assert main([*args, "--seeds", "1"]) == 0
    first = json.loads((tmp_path / "seed_quality.json").read_text())
    ran = recording_chains(monkeypatch, harness.run_chain)
    assert main([*args, "--seeds", "2", "--resume"]) == 0
    assert ran == [("sft", 1)]
    both = json.loads((tmp_path / "seed_quality.json").read_text())
    assert both["seeds"] == [0, 1] and both["resumed"]["from_seeds"] == [0]
    assert [s for s in both["scores"] if s["seed"] == 0] == first["scores"]
    answers = (tmp_path / "seed_quality_answers.jsonl").read_text().splitlines()
    assert {json.loads(a)["seed"] for a in answers} == {0, 1}


def test_resume_without_a_stopped_run_says_so(ws, tmp_path, capsys):
    assert main(["bench", "quality", "--seeds", "2", "--limit", "1", "--model", "tiny", "--root", str(ws.root),
                 "--out", str(tmp_path), "--option", "sets=demo", "--methods", "base", *FAST, "--resume"]) == 2
    assert "there is no stopped run of this benchmark there" in capsys.readouterr().err


def test_a_finished_run_removes_its_partial_file(ws, tmp_path):
    main(["bench", "quality", "--seeds", "2", "--limit", "1", "--model", "tiny", "--root", str(ws.root),
          "--out", str(tmp_path), "--option", "sets=demo", "--methods", "base", *FAST])
    assert (tmp_path / "seed_quality.json").exists() and not (tmp_path / "seed_quality.partial.json").exists()
    assert json.loads((tmp_path / "seed_quality.json").read_text())["seeds"] == [0, 1]


def test_a_run_of_uncommitted_source_says_so_in_its_commit(tmp_path, monkeypatch):
    import subprocess

    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "m.py").write_text("x = 1\n")
    (tmp_path / "notes.md").write_text("a\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "first")
    monkeypatch.setattr(harness, "REPO", tmp_path)
    head = harness._git_commit()
    assert len(head) == 40
    (tmp_path / "notes.md").write_text("b\n")  # results and docs written during a run do not count
    assert harness._git_commit() == head
    (tmp_path / "src" / "m.py").write_text("x = 2\n")
    assert harness._git_commit() == f"{head}+dirty"


def test_bench_memory_fast_sets_only_the_memory_knobs_the_user_left_alone():
    from lmsleep.cli import build_parser
    from lmsleep.config import Params

    params = Params()
    assert params.seed.ks_activation_checkpointing and params.seed.ks_return_freed_memory_kb == 256
    fast = harness.memory_mode(params, "fast")
    assert not fast.seed.ks_activation_checkpointing and fast.seed.ks_return_freed_memory_kb == 0
    assert fast.seed.ks_steps == params.seed.ks_steps and fast.evaluate == params.evaluate  # nothing else moves
    assert params.seed.ks_activation_checkpointing  # the caller's params are not modified
    import dataclasses

    set_512 = dataclasses.replace(params, seed=dataclasses.replace(params.seed, ks_return_freed_memory_kb=512))
    mixed = harness.memory_mode(set_512, "fast", {"seed.ks_return_freed_memory_kb": 512})  # --set wins
    assert not mixed.seed.ks_activation_checkpointing and mixed.seed.ks_return_freed_memory_kb == 512
    assert harness.memory_mode(params, "lean") is params
    with pytest.raises(ValueError, match="fast or lean"):
        harness.memory_mode(params, "tiny")
    assert build_parser().parse_args(["bench", "squad"]).memory == "fast"
    assert build_parser().parse_args(["bench", "squad", "--memory", "lean"]).memory == "lean"
