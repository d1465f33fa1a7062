"""The `nights` benchmark (issue 5): the synthetic world is deterministic and its splits never overlap, the world model
is pretrained once and then found in its cache, and a --limit'ed sequential run fills R with retention metrics while
no probe ever reaches anything trained on (the pretraining corpus included)."""

import json

import pytest

from lmsleep.bench import harness, nights
from lmsleep.bench.nights import NightsBenchmark, ensure_world_model, pretraining_corpus, rendered, world_model_dir
from lmsleep.bench.world import RELATIONS, World
from lmsleep.config import Workspace, load_params, parse_overrides
from lmsleep.memory import probes_of

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# Pretraining in seconds: a 1-layer model, a few steps; the world small.
TINY = {"nights": 3, "facts_per_night": 4, "facts_per_memory": 2, "pretrain_steps": 6, "pretrain_hidden": 32,
        "pretrain_layers": 1, "pretrain_heads": 2, "pretrain_vocab": 400, "pretrain_batch": 4, "pretrain_people": 8}
FAST = ["seed.epochs=1", "seed.ks_steps=2", "seed.ks_max_new_tokens=6", "seed.ks_expert_rank=4",
        "seed.ks_prompts_per_memory=2", "seed.ks_question_share=0.5", "seed.lora_rank=4", "evaluate.max_new_tokens=4",
        "seed.ks_anchor_prompts=2"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return Workspace(tmp_path_factory.mktemp("nights-ws").resolve())


def test_world_is_deterministic_and_seeded():
    a, b = World(seed=3, nights=4), World(seed=3, nights=4)
    assert a.nights == b.nights and a.reference_text == b.reference_text
    assert a.pretraining_examples(50) == b.pretraining_examples(50)
    c = World(seed=4, nights=4)
    assert c.nights != a.nights and c.pretraining_examples(50) != a.pretraining_examples(50)
    # the nights do not depend on the pretraining settings
    assert World(seed=3, nights=4, people=50).nights == a.nights
    night = a.nights[0]
    assert len(a.nights) == 4 and len(night) == 4  # 8 facts, 2 per memory
    for memory in night:
        assert set(memory) >= {"id", "time", "source", "kind", "text", "probes"} and memory["kind"] == "document"
        assert len(probes_of(memory)) == 2
        for probe in probes_of(memory):
            assert probe["question"].endswith("?") and probe["question"] not in memory["text"]
            assert probe["answer"] in memory["text"]  # readable in context: icl can answer it


def test_world_splits_never_overlap():
    world = World(seed=0, nights=30, people=60)
    night_people = [p for night in world.night_people for p in night]
    names = [p.name for p in night_people + world.reference_people + world.people]
    assert len(names) == len(set(names))  # no person is in two splits (or twice in one)
    reserved = world.reserved_names()
    corpus = " ".join(rendered(e) for e in world.pretraining_examples(3000))
    assert not [n for n in reserved if n in corpus]  # no night or reference person (or friend) is pretrained on
    night_facts = {(f.name, f.relation) for p in night_people for f in p.facts}
    assert not night_facts & {(f.name, f.relation) for p in world.people for f in p.facts}
    for night in world.nights:
        for memory in night:
            assert not [p["question"] for p in probes_of(memory) if p["question"] in corpus]
    assert not [p.name for p in world.reference_people if p.name in " ".join(m["text"] for n in world.nights
                                                                                for m in n)]
    for statements, probe_templates, writer_templates in RELATIONS.values():
        assert not set(probe_templates) & set(writer_templates)  # a written question is never a probe's wording


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="multiple of facts_per_memory"):
        NightsBenchmark(facts_per_night=5, facts_per_memory=2)
    with pytest.raises(ValueError, match="facts_per_memory must be <="):
        World(facts_per_memory=9, facts_per_night=9)
    with pytest.raises(ValueError, match="bad --option"):
        harness.get_benchmark("nights", nightz=3)


def test_world_model_is_pretrained_once_then_reused(ws, monkeypatch):
    bench = NightsBenchmark(**TINY)
    settings = bench.pretrain_settings()
    params = load_params(ws.root / "params.yaml")
    path = bench.base_model(ws, params)
    assert path == world_model_dir(ws, settings) and path.parent == ws.root / "models" / "bench"
    assert path.name == f"world-{nights.settings_hash(settings)}"
    info = json.loads((path / "pretrain.json").read_text())
    assert info["settings"] == settings and info["probes"] == 3 * 4
    assert 0.0 <= info["in_context_accuracy"] <= 1.0 and len(info["losses_every_50"]) >= 1
    stamp = (path / "model.safetensors").stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the cached world model was pretrained again")

    monkeypatch.setattr(nights, "pretrain_world_model", no_training)
    assert bench.base_model(ws, params) == path and (path / "model.safetensors").stat().st_mtime_ns == stamp
    # other settings are another model
    with pytest.raises(AssertionError, match="pretrained again"):
        ensure_world_model(ws, settings | {"steps": 7})
    # the reading anchors beside it read back (line breaks and all) as the world wrote them
    from lmsleep.ks.samples import read_anchor_prompts

    anchors = read_anchor_prompts(path / nights.READING_ANCHORS, 10_000, seed=0)
    assert sorted(anchors) == sorted(nights.world_of(settings).reading_anchors(256))
    # the drift guard's text beside it: world documents about people no night, reference or anchor names
    from lmsleep.ks.drift_guard import read_drift_text

    world = nights.world_of(settings)
    drift = read_drift_text(path / nights.DRIFT_TEXT)
    assert drift == world.drift_text() and drift.count("\n\n") == 23
    reserved = world.reserved_names() | {p.name for p in world.people}
    assert not [name for name in reserved if name in drift] and not set(drift.split("\n\n")) & set(anchors)
    assert drift not in world.reference_text and world.reference_text not in drift
    # and its reading items: about people no night, reference, anchor or drift text names; answers as replies start
    from lmsleep.ks.drift_guard import read_reading_items

    reading = read_reading_items(path / nights.READING_GUARD)
    assert reading == world.reading_guard() and len(reading) == 48
    assert all(item["answer"].startswith(" ") and item["answer"].strip() in item["text"] for item in reading)
    assert not [n for n in reserved if any(n in item["text"] for item in reading)]
    assert not {item["text"] for item in reading} & {a.split("\n")[1] for a in anchors if "\n" in a}
    assert not [item for item in reading if item["text"] in drift]


def test_the_guard_reads_the_worlds_drift_text_unless_one_is_named(ws):
    bench = NightsBenchmark(**TINY)
    off = load_params(ws.root / "params.yaml", {"seed.ks_drift_budget": 0.0})
    assert harness.with_drift_text(bench, ws, off) is off  # guard off: nothing to choose
    on = load_params(ws.root / "params.yaml", {"seed.ks_drift_budget": 0.05})
    chosen = harness.with_drift_text(bench, ws, on).seed.ks_drift_text
    assert chosen == str(bench.base_model(ws, on) / nights.DRIFT_TEXT)
    named = load_params(ws.root / "params.yaml", {"seed.ks_drift_budget": 0.05, "seed.ks_drift_text": "mine.txt"})
    assert harness.with_drift_text(bench, ws, named).seed.ks_drift_text == "mine.txt"
    assert harness.Benchmark().drift_text_file(ws, on) is None  # the bundled text for SmolLM2's benchmarks
    # the reading check likewise: the world's own items unless a file is named; the drift text stays as it was
    reading = load_params(ws.root / "params.yaml", {"seed.ks_drift_budget": 0.0, "seed.ks_reading_budget": 0.05})
    chosen = harness.with_drift_text(bench, ws, reading).seed
    assert chosen.ks_reading_file == str(bench.base_model(ws, reading) / nights.READING_GUARD)
    assert chosen.ks_drift_text == ""
    mine = load_params(ws.root / "params.yaml", {"seed.ks_reading_budget": 0.05, "seed.ks_reading_file": "r.jsonl"})
    assert harness.with_drift_text(bench, ws, mine).seed.ks_reading_file == "r.jsonl"
    assert harness.Benchmark().reading_guard_file(ws, on) is None


def test_reading_anchors_are_about_throwaway_people_and_never_probes():
    world = World(seed=0, nights=30, people=60)
    anchors = world.reading_anchors(200)
    assert anchors == world.reading_anchors(200) and anchors != world.reading_anchors(200, seed=1)
    known = world.reserved_names() | {p.name for p in world.people}
    probes = {p["question"] for night in world.nights for m in night for p in probes_of(m)}
    for anchor in anchors:
        text, question = anchor.split("\n\n", 1)
        assert text.startswith("Text:\n") and "\nQuestion: " in question and question.endswith("?")
        assert not [name for name in known if name in anchor]
        assert not [q for q in probes if q in anchor]
        asked = question.split("Question: ")[1]
        assert not [t for _, probe_templates, _ in RELATIONS.values() for t in probe_templates
                    if t.split("{n}")[0] and asked.startswith(t.split("{n}")[0]) and asked.endswith(t.split("{n}")[1])]


def test_limited_sequential_run_fills_R_and_never_trains_on_probes(ws, tmp_path):
    bench = NightsBenchmark(**TINY)
    params = load_params(ws.root / "params.yaml", parse_overrides(FAST))
    methods = ["base", "icl", "sft", "sleep_ks"]
    result = harness.run(bench, params, ws, seeds=1, limit=2, methods=methods, out_dir=tmp_path,
                         command="lmsleep bench nights --limit 2")
    tasks = result["tasks"]
    assert [t["name"] for t in tasks] == ["night00", "night01"] and [t["memories"] for t in tasks] == [2, 2]
    retention = result["retention"]
    assert retention["tasks"] == ["night00", "night01"] and set(retention["methods"]) == set(methods)
    for method, r in retention["methods"].items():
        (R,) = r["R_per_seed"]
        assert len(R) == 2 and all(len(row) == 2 for row in R)
        assert all(0.0 <= v <= 1.0 for row in R for v in row)
        for key in ("acc", "bwt", "fwt", "forgetting", "perplexity_drift"):
            assert r[key]["n_seeds"] == 1, (method, key)
    # every (after, task) cell was measured: 2 nights x 2 nights x methods
    assert len(result["scores"]) == 2 * 2 * len(methods)
    assert result["reference_perplexity_base"] > 1
    assert result["model"].startswith("bench/world-")  # the benchmark's own model, not --model
    head = result["headline"]
    assert head["nights"] == 2 and set(head["methods"]) == set(methods)
    assert set(head["methods"]["sft"]) >= {"acc", "bwt", "fwt", "forgetting", "perplexity_drift"}
    assert head["methods"]["base"]["bwt"]["mean"] == 0  # the untrained model does not change
    assert "Issue 5" in (tmp_path / "nights.md").read_text()
    assert "Reads the next night" in (tmp_path / "nights.md").read_text()

    # after each night but the last, a trained model is asked the NEXT night's probes with their memory in context
    night01 = {p["question"] for m in bench.load(2)[1].memories for p in m["probes"]}
    for step in result["steps"]:
        reads = step.get("next_in_context_accuracy")
        if step["method"] in ("sft", "sleep_ks") and step["after"] == "night00":
            assert 0.0 <= reads <= 1.0
            assert {e["question"] for e in step["next_in_context_examples"]} <= night01
        else:
            assert reads is None and "next_in_context_examples" not in step, step
    assert head["methods"]["sleep_ks"]["reads_next"]["mean"] == next(
        s["next_in_context_accuracy"] for s in result["steps"] if s["method"] == "sleep_ks" and s["after"] == "night00")
    assert head["methods"]["base"]["reads_next"] is None

    # probes never reach training: not in what the methods trained on, nor in the pretraining corpus
    questions = {json.loads(line)["question"] for line in (tmp_path / "nights_answers.jsonl").read_text().splitlines()}
    assert len(questions) == 2 * 2 * 2
    rows = [json.loads(line) for line in (tmp_path / "nights_train_texts.jsonl").read_text().splitlines()]
    assert {r["method"] for r in rows} == {"sft", "sleep_ks"}
    for row in rows:
        text = " ".join(str(row.get(k, "")) for k in ("text", "prompt", "completion"))
        assert not any(q in text for q in questions), row
    corpus = " ".join(rendered(e) for e in pretraining_corpus(bench.pretrain_settings()))
    assert not any(q in corpus for q in questions)
    memory_names = {m["meta"]["person"] for t in bench.load(2) for m in t.memories}
    assert not any(name in corpus for name in memory_names)
    assert not any(p.name in corpus for p in bench.world().reference_people)
