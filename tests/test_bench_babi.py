"""lmsleep bench babi: the bAbI reader, long-story construction, the probe-leak property and a --limit'ed run on a
tiny model trained in seconds on a small qa1 fixture written here (the real ../shared/data/babi is read only by the
skip-clean loader test)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lmsleep.bench import babi, babi_model
from lmsleep.bench import babi_data as bdata
from lmsleep.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

PEOPLE = ["mary", "john", "daniel", "sandra", "yann", "emma"]
PLACES = ["bathroom", "hallway", "garden", "office", "kitchen", "bedroom"]
VERBS = ["moved to", "went to", "journeyed to", "travelled to", "went back to"]


def write_qa1(path: Path, stories: int, seed: int) -> None:
    """bAbI qa1 format: numbered statements, a question every third line with its answer and supporting fact."""
    rng = random.Random(seed)
    lines = []
    for _ in range(stories):
        n, where, last = 0, {}, {}
        for _ in range(4):
            for _ in range(2):
                n += 1
                who, place = rng.choice(PEOPLE), rng.choice(PLACES)
                where[who], last[who] = place, n
                lines.append(f"{n} {who.capitalize()} {rng.choice(VERBS)} the {place}.")
            n += 1
            who = rng.choice(sorted(where))
            lines.append(f"{n} Where is {who.capitalize()}? \t{where[who]}\t{last[who]}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def babi_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared-data")
    (root / "babi" / "en").mkdir(parents=True)
    write_qa1(root / "babi" / "en" / "qa1_single-supporting-fact_train.txt", 60, seed=0)
    write_qa1(root / "babi" / "en" / "qa1_single-supporting-fact_test.txt", 40, seed=1)
    return root


def test_reader_and_query_forms(tmp_path):
    f = tmp_path / "qa2_two-supporting-facts_train.txt"
    f.write_text("1 Mary moved to the bathroom.\n2 Mary got the football there.\n3 Where is the football? \tbathroom"
                 "\t2 1\n4 John went to the hallway.\n5 Where is John? \thallway\t4\n1 Sandra went to the office.\n"
                 "2 Where is Sandra? \toffice\t1\n")
    qs = bdata.read_questions(f, "qa2")
    assert [(q.story, q.question, q.answer, q.supports) for q in qs] == [
        (0, "Where is the football?", "bathroom", [1, 0]), (0, "Where is John?", "hallway", [2]),
        (1, "Where is Sandra?", "office", [0])]
    assert qs[1].facts == ["Mary moved to the bathroom.", "Mary got the football there.", "John went to the hallway."]
    assert bdata.cloze_of("Where is the football?") == ["the", "football", "is", "in", "the"]
    assert bdata.question_entity("Where is the football?") == {"football"}
    with pytest.raises(ValueError, match="where-is"):
        bdata.cloze_of("Where was the football before the kitchen?")
    assert bdata.entities("Mary got the football there.") == {"mary", "football"}
    assert bdata.entities("Mary went back to the garden.") == {"mary"}
    assert bdata.entity_prompts(["Mary got the football there.", "John went to the hallway.", "Mary left it."]) == [
        ["|", "mary", "is", "in", "the"], ["|", "the", "football", "is", "in", "the"], ["|", "john", "is", "in", "the"]]
    assert bdata.pack_windows([[1] * 4, [1] * 4, [1] * 3, [1] * 5], 8) == [[0, 1], [2, 3]]
    # renaming (base training): people, places, objects permuted consistently; the answer follows its place
    vocab = bdata.Vocab(sorted({w for q in qs for x in q.facts + [q.question, q.answer] for w in bdata.words(x)}))
    classes = babi_model.entity_classes(qs, vocab)
    assert [vocab.decode(c) for c in classes] == ["john mary sandra", "bathroom hallway office"]
    example = babi_model.train_examples(qs[:1], vocab, 24)[0]
    rng = random.Random(3)
    seen = set()
    for _ in range(20):
        context, query, answer = babi_model.renamed(example, classes, rng)
        text = vocab.decode(context).split()  # "<person> moved to the <place> . <person> got the football there ."
        assert text[0] == text[6] and text[4] == vocab.tokens[answer] and text[1:4] == ["moved", "to", "the"]
        assert vocab.decode(query) == "| where is the football ?"  # objects of one kind only: unchanged
        seen.add(vocab.tokens[answer])
    assert len(seen) > 1


def test_long_stories_keep_the_supporting_fact_early_and_the_answer_unchanged(babi_data):
    test = bdata.read_questions(bdata.task_file(babi_data, "qa1", "test"), "qa1")
    train = bdata.read_questions(bdata.task_file(babi_data, "qa1", "train"), "qa1")
    vocab = bdata.Vocab(sorted({w for q in train for s in q.facts + [q.question, q.answer] for w in bdata.words(s)}))
    stories = bdata.build_stories(test, vocab, [1, 2, 4], 3, 24, random.Random(0))
    assert [s.length for s in stories] == [1] * 3 + [2] * 3 + [4] * 3
    assert len({(s.source, s.question) for s in stories}) == 9  # no question reused
    for s in stories:
        assert len(s.windows) == s.length == len(s.window_ids)
        assert all(len(ids) <= 24 for ids in s.window_ids)
        person = bdata.question_entity(s.question).pop()
        mentions = [(w, x) for w, sentences in enumerate(s.windows) for x in sentences
                    if bdata.words(x)[0] == person]
        assert mentions and all(w == 0 for w, _ in mentions)  # only in window 1 (the head)
        assert bdata.words(mentions[-1][1])[-2] == s.answer  # the last mention still gives the answer


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_limited_run_on_a_tiny_model(babi_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LMSLEEP_SHARED_DATA", str(babi_data))
    args = ["bench", "babi", "--seeds", "2", "--limit", "2", "--root", str(tmp_path),
            "--set", "tracking.wandb_mode=disabled", "--option", "tasks=qa1", "--option", "lengths=1,3",
            "--option", "window_tokens=24", "--option", "train_steps=40", "--option", "hidden=32",
            "--option", "layers=2", "--option", "steps=2", "--option", "level_steps=2", "--option", "rank=2"]
    assert main(args) == 0
    out = tmp_path / "bench" / "results"
    result = json.loads((out / "babi.json").read_text())
    methods = list(babi.BabiBenchmark.default_methods)
    assert result["methods"] == methods and result["seeds"] == [0, 1] and result["limit"] == 2
    assert result["command"].startswith("lmsleep bench babi --seeds 2 --limit 2")
    assert result["base_model"]["questions"] == 60 * 4  # the train file only
    assert result["base_model"]["loss_last"] < result["base_model"]["loss_first"]
    agg = result["aggregate"]
    assert set(agg) == {"1", "3"}
    assert "full_context" in agg["1"] and "full_context" not in agg["3"]  # a 3-window story does not fit
    for length, per in agg.items():
        for method, entry in per.items():
            assert 0.0 <= entry["accuracy"]["mean"] <= 1.0 and entry["probes"] == 2
            assert entry["accuracy"]["ci_method"].startswith("t over 2 seeds") and len(entry["accuracy"]["per_seed"]) == 2
    assert set(result["by_levels"]) == set(methods) - {"full_context"}
    answers = read_jsonl(out / "babi_answers.jsonl")
    assert len(answers) == 2 * (2 * 5 + 2 * 6)  # seeds x (short stories x 5 methods + long ones x 6)
    chained = {(a["method"], a["length"]): a for a in answers if a["method"].startswith("chain") and a["seed"] == 0}
    # 2 windows streamed: 1 level keeps 2 experts; 2 and 3 levels move level 1 into level 2 after window 2
    assert chained[("chain_1", 3)]["experts"] == {"l1": 2}
    assert chained[("chain_2", 3)]["experts"] == {"l1": 0, "l2": 1}
    assert chained[("chain_3", 3)]["experts"] == {"l1": 0, "l2": 1, "l3": 0}
    assert chained[("chain_3", 3)]["consolidations"] == 3 and chained[("chain_1", 1)]["consolidations"] == 0
    md = (out / "babi.md").read_text()
    assert all(m in md for m in methods) and "| 3 |" in md
    assert (out / "babi.png").stat().st_size > 0
    # the probe-leak audit: consolidation prompts are clozes made from windows, never a probe's question
    texts = read_jsonl(out / "babi_train_texts.jsonl")
    assert texts and {t["method"] for t in texts} == {"chain_1", "chain_2", "chain_3"}
    questions = {a["question"] for a in answers}
    normalised = {" ".join(bdata.words(q)) for q in questions}
    for t in texts:
        assert t["prompt"].endswith("is in the") and t["prompt"].startswith("| ")
        assert not any(q in t["prompt"] or q.lower() in t["prompt"] for q in questions | normalised), t
    # the cached base model is reused: a second run trains nothing
    cached = list((tmp_path / "models" / "bench").glob("babi-*"))
    assert len(cached) == 1 and (cached[0] / "vocab.json").exists()
    monkeypatch.setattr(babi_model, "train_base", lambda *a, **k: pytest.fail("the cached model must be reused"))
    assert main(args[:3] + ["1"] + args[4:] + ["--methods", "last_window,chain_2"]) == 0
    again = json.loads((out / "babi.json").read_text())
    assert again["methods"] == ["last_window", "chain_2"] and again["base_model"]["path"] == result["base_model"][
        "path"]
    assert main(args + ["--methods", "chain_9"]) != 0
    assert "unknown methods ['chain_9']" in capsys.readouterr().err


def test_real_babi_loader_skips_cleanly_without_shared_data():
    root = babi.shared_data()
    if not (root / "babi" / "en").is_dir():
        pytest.skip(f"{root / 'babi'} absent (a fresh clone without ../shared/data)")
    for task in ("qa1", "qa2"):
        for split in ("train", "test"):
            qs = bdata.read_questions(bdata.task_file(root, task, split), task)
            assert len(qs) == 1000  # SOURCE.md: every file holds exactly 1,000 questions
            assert all(bdata.cloze_of(q.question) for q in qs) and all(q.supports for q in qs)
    first = bdata.read_questions(bdata.task_file(root, "qa1", "train"), "qa1")[0]
    assert (first.question, first.answer, first.facts[first.supports[0]]) == (
        "Where is Mary?", "bathroom", "Mary moved to the bathroom.")
