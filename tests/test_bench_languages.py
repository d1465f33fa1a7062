"""The languages benchmark (lmsleep.bench.languages) and chrF (lmsleep.bench.chrf): chrF on hand-computed cases (and
against sacrebleu when it happens to be installed), lessons built from a fixture CLDF dictionary and from the real
Dictionaria data (skipped when ../shared/data is absent), held-out probes never in a memory or in what was trained
on, and --limit'ed single and sequential runs on the tiny model through harness.run."""

import csv
import json
import random
from pathlib import Path

import pytest

from lmsleep.bench import harness
from lmsleep.bench.chrf import chrf, corpus_chrf
from lmsleep.bench.languages import LanguagesBenchmark, build_lessons, probe_leaks, read_dictionary
from lmsleep.bench.squad import shared_data
from lmsleep.config import load_params, parse_overrides

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

FAST = {"seed.epochs": "1", "seed.ks_steps": "2", "seed.ks_max_new_tokens": "6", "seed.ks_expert_rank": "4",
        "seed.ks_prompts_per_memory": "2", "seed.ks_question_share": "0.5", "evaluate.max_new_tokens": "4"}
REAL = shared_data() / "lowres_dictionaria"  # ../shared/data, or LMSLEEP_SHARED_DATA (a worktree elsewhere)


# ---------------------------------------------------------------- chrF


def test_chrf_hand_computed_cases():
    assert chrf("the cat", "the cat") == pytest.approx(100.0)
    assert chrf("a b", "ab") == pytest.approx(100.0)  # whitespace is not part of the n-grams
    assert chrf("", "abc") == 0.0 and chrf("abc", "") == 0.0 and chrf("xyz", "abc") == 0.0
    # 'ab' vs 'abc': 1-grams P 2/2 R 2/3, 2-grams P 1/1 R 1/2, no 3-grams in 'ab' (orders 3-6 not effective):
    # P = 1, R = 7/12, F2 = 5 * 7/12 / (4 + 7/12) = 35/55
    assert chrf("ab", "abc") == pytest.approx(100 * 35 / 55)
    # 'abcd' vs 'abce': P = R per order: 3/4, 2/3, 1/2, 0 (orders 5, 6 absent) -> F = mean = 23/48
    assert chrf("abcd", "abce") == pytest.approx(100 * 23 / 48)
    # recall weighs 4x precision (beta 2): a short correct prefix scores lower than the same extra text
    assert chrf("ab", "abcdef") < chrf("abcdefgh", "abcdef")
    assert chrf("Ab", "ab") < 100.0  # case is kept
    # corpus: ('ab','ab') + ('a','b'): 1-grams 2 matches of 3 / 3, 2-grams 1 of 1 -> P = R = (2/3 + 1) / 2
    assert corpus_chrf(["ab", "a"], ["ab", "b"]) == pytest.approx(100 * 5 / 6)
    with pytest.raises(ValueError):
        corpus_chrf(["a"], [])


def test_chrf_matches_sacrebleu_when_installed():
    sacrebleu = pytest.importorskip("sacrebleu")  # test-only; not a dependency of the project
    scorer = sacrebleu.metrics.CHRF()
    rng = random.Random(0)
    vocab = "the cat sat on a mat, dog ran far away! big small red Ynd serare".split()
    pairs = [(" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 7))),
              " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 7)))) for _ in range(300)]
    for hyp, ref in pairs:
        assert chrf(hyp, ref) == pytest.approx(scorer.sentence_score(hyp, [ref]).score, abs=1e-9), (hyp, ref)
    hyps, refs = [p[0] for p in pairs], [p[1] for p in pairs]
    assert corpus_chrf(hyps, refs) == pytest.approx(scorer.corpus_score(hyps, [refs]).score, abs=1e-9)


# ---------------------------------------------------------------- a fixture dictionary in CLDF layout

WORDS = {  # headword: (part of speech, gloss)
    "zorp": ("noun", "house"), "melu": ("verb", "to eat"), "tana": ("noun", "fish"), "bisk": ("noun", "child"),
    "ovo": ("pronoun", "I"), "kela": ("verb", "to see"), "rupa": ("adjective", "big"), "nuan": ("noun", "river"),
    "dapi": ("verb", "to go"), "sel": ("noun", "canoe"), "wuro": ("noun", "mother"), "pik": ("adverb", "now"),
}
SENTENCES = [  # (text, English, words it illustrates)
    ("Ovo melu tana pik.", "I eat fish now.", ["melu"]), ("Bisk kela zorp rupa.", "The child sees a big house.",
                                                          ["kela"]),
    ("Wuro dapi nuan.", "Mother goes to the river.", ["dapi"]), ("Ovo kela sel rupa.", "I see a big canoe.", ["sel"]),
    ("Bisk melu tana.", "The child eats fish.", ["bisk"]), ("Wuro kela bisk pik.", "Mother sees the child now.",
                                                            ["wuro"]),
    ("Ovo dapi zorp.", "I go to the house.", ["zorp"]), ("Sel rupa nuan pik.", "The big canoe is on the river now.",
                                                         ["nuan"]),
    ("Tana rupa nuan.", "Dia makan ikan di sungai.", ["tana"]),  # Indonesian in Translated_Text, English swapped in
    ("Ovo rupa melu.", "Saya makan banyak dengan dia.", ["rupa"]),  # no English translation at all: never used
]
SWAPPED_ENGLISH = "The fish of the river is big."


def write_dictionary(folder: Path, prefix: str) -> None:
    folder.mkdir(parents=True)
    heads = {w: f"{prefix}{w}" for w in WORDS}  # each language its own words

    def write(name, header, rows):
        with (folder / name).open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)

    write("entries.csv", ["ID", "Language_ID", "Headword", "Part_Of_Speech"],
          [[f"LX{i}", prefix, heads[w], pos] for i, (w, (pos, _)) in enumerate(WORDS.items())])
    write("senses.csv", ["ID", "Description", "Entry_ID"],
          [[f"SN{i}", gloss, f"LX{i}"] for i, (_, (_, gloss)) in enumerate(WORDS.items())])
    index = {w: i for i, w in enumerate(WORDS)}
    rows = []
    for n, (text, english, illustrated) in enumerate(SENTENCES):
        text = " ".join(prefix + t.lower() if t.rstrip(".").lower() in WORDS else t for t in text.split())
        alt = SWAPPED_ENGLISH if english.startswith("Dia") else "Terjemahan dalam bahasa Indonesia."
        rows.append([f"XV{n}", prefix, text, english, " ; ".join(f"SN{index[w]}" for w in illustrated), alt])
    write("examples.csv", ["ID", "Language_ID", "Primary_Text", "Translated_Text", "Sense_IDs", "alt_translation1"],
          rows)


@pytest.fixture(scope="module")
def dictionaries(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared-data")
    write_dictionary(root / "lowres_dictionaria" / "kalamang", "ka")
    write_dictionary(root / "lowres_dictionaria" / "nen", "ne")
    return root


@pytest.fixture(autouse=True)
def shared_data(dictionaries, monkeypatch):
    monkeypatch.setenv("LMSLEEP_SHARED_DATA", str(dictionaries))
    read_dictionary.cache_clear()
    yield
    read_dictionary.cache_clear()


def test_fixture_dictionary_reads_swapped_rows_and_skips_untranslated(dictionaries):
    d = read_dictionary(str(dictionaries / "lowres_dictionaria" / "kalamang"), "Kalamang")
    assert len(d.entries) == len(WORDS) and d.by_headword["kazorp"] == ("LX0",)
    english = {x.english for x in d.examples}
    assert SWAPPED_ENGLISH in english  # the Indonesian Translated_Text was replaced by the English alt translation
    assert not any(e.startswith(("Dia ", "Saya ")) for e in english) and len(d.examples) == len(SENTENCES) - 1


def test_lessons_hold_entries_and_never_the_held_out_probes():
    tasks = LanguagesBenchmark(lessons=4).load(None)
    assert [t.name for t in tasks] == ["kalamang", "nen"] and all(len(t.memories) == 4 for t in tasks)
    memories = [m for t in tasks for m in t.memories]
    assert probe_leaks(memories) == []
    for m in memories:
        sentence, word = m["probes"]
        assert sentence["question"].startswith(f"Translate this {m['meta']['language']} sentence into English: ")
        held_text = sentence["question"].split(": ", 1)[1]
        for other in memories:  # neither the held-out sentence nor its translation is in any memory
            assert held_text.lower() not in other["text"].lower()
            assert sentence["answer"].lower() not in other["text"].lower()
        # the word probe asks a gloss the lesson teaches, in a form no lesson contains
        headword = word["question"].split('"')[1]
        assert f"- {headword} (" in m["text"] and word["answer"] in m["text"]
        assert all(word["question"] not in other["text"] for other in memories)
    # --limit keeps the first K lessons, the same ones
    assert [m["id"] for m in LanguagesBenchmark(lessons=4).load(2)[0].memories] == ["kalamang-001", "kalamang-002"]


def test_probe_leaks_finds_a_planted_leak():
    lessons = LanguagesBenchmark(lessons=3).load(None)[0].memories
    sentence = lessons[0]["probes"][0]
    planted = [lessons[0], lessons[1] | {"text": lessons[1]["text"] + "\n" + sentence["answer"]}]
    assert probe_leaks(planted) and "kalamang-001" in probe_leaks(planted)[0]


def test_a_sentence_the_word_list_would_quote_is_never_held_out():
    from lmsleep.bench.languages import Dictionary, Entry, Example, held_out_sentences

    entries = {"e1": Entry("e1", "kabo", "noun", "the child eats fish"), "e2": Entry("e2", "sima", "verb", "to eat"),
               "e3": Entry("e3", "lun", "noun", "water")}
    examples = (Example("x1", "Kabo sima lun.", "The child eats fish.", ("e1",)),  # its translation is a gloss
                Example("x2", "Sima lun kabo.", "He drinks the water.", ("e2",)))
    d = Dictionary("Test", entries, examples, {"kabo": ("e1",), "sima": ("e2",), "lun": ("e3",)})
    assert [x.id for x in held_out_sentences(d, 5)] == ["x2"]


def test_options_are_checked():
    assert LanguagesBenchmark(mode="single").sequential is False and LanguagesBenchmark().sequential is True
    assert LanguagesBenchmark(mode="single").stem == "languages_single"
    only_sentences = LanguagesBenchmark(lessons=2, probes="sentences").load(None)
    assert all(len(m["probes"]) == 1 for t in only_sentences for m in t.memories)
    for bad in ({"mode": "both"}, {"languages": "kalamang,manchu"}, {"probes": "grammar"}, {"lessons": 0}):
        with pytest.raises(ValueError):
            LanguagesBenchmark(**bad)
    with pytest.raises(ValueError, match="usable held-out sentences"):
        LanguagesBenchmark(lessons=50).load(None)


def test_grade_is_chrf():
    from lmsleep.config import Params

    bench = LanguagesBenchmark(threshold=60)
    graded = bench.grade(" ab ", "abc", Params())
    assert graded["chrf"] == pytest.approx(100 * 35 / 55) and graded["f1"] == pytest.approx(35 / 55)
    assert graded["correct"] is True and bench.grade("ab", "abcdefgh", Params())["correct"] is False


@pytest.mark.skipif(not REAL.exists(), reason="../shared/data/lowres_dictionaria is not next to the repo")
def test_real_dictionaries_give_twelve_lessons_without_leaks(monkeypatch):
    monkeypatch.setenv("LMSLEEP_SHARED_DATA", str(REAL.parent))
    read_dictionary.cache_clear()
    tasks = LanguagesBenchmark().load(None)
    assert [len(t.memories) for t in tasks] == [12, 12]
    assert all(len(m["probes"]) == 2 for t in tasks for m in t.memories)
    assert probe_leaks([m for t in tasks for m in t.memories]) == []
    kalamang = read_dictionary(str(REAL / "kalamang"), "Kalamang")
    assert len(kalamang.entries) > 2000 and len(kalamang.examples) > 1000
    # SOURCE.md: a few rows carry Indonesian in Translated_Text; those are read from alt_translation1
    assert not any(x.english.startswith("Dia kasih") for x in kalamang.examples)
    # a bigger lesson set is still leak-free (the construction, not luck)
    assert probe_leaks(build_lessons(kalamang, 60)) == []


# ---------------------------------------------------------------- limited runs on the tiny model


@pytest.fixture(scope="module")
def ws(make_tiny_workspace):
    return make_tiny_workspace().ws


def run(ws, out: Path, mode: str, methods: list[str]) -> dict:
    params = load_params(ws.root / "params.yaml", parse_overrides([f"{k}={v}" for k, v in FAST.items()]))
    return harness.run(LanguagesBenchmark(mode=mode, lessons=3), params, ws, seeds=1, limit=2, methods=methods,
                       out_dir=out, command=f"test languages {mode}")


def assert_nothing_held_out_was_trained_on(out: Path, stem: str, result: dict) -> None:
    rows = [json.loads(line) for line in (out / f"{stem}_train_texts.jsonl").read_text().splitlines()]
    assert rows and {r["method"] for r in rows} == {m for m in result["methods"] if m not in ("base", "icl")}
    answers = [json.loads(line) for line in (out / f"{stem}_answers.jsonl").read_text().splitlines()]
    held = {a["question"] for a in answers}
    held |= {a["answer"] for a in answers if "sentence into English" in a["question"]}
    held |= {a["question"].split("English: ", 1)[1] for a in answers if "sentence into English" in a["question"]}
    for row in rows:
        text = " ".join(str(row.get(k, "")) for k in ("text", "prompt", "completion"))
        assert not any(h in text for h in held), row


def test_single_mode_limited_run(ws, tmp_path):
    methods = ["base", "icl", "sft", "sleep_ks"]
    result = run(ws, tmp_path, "single", methods)
    assert result["sequential"] is False and result["retention"] is None
    assert [(t["name"], t["memories"], t["probes"]) for t in result["tasks"]] == [("kalamang", 2, 4), ("nen", 2, 4)]
    headline = result["headline"]
    for group in ("kalamang", "nen"):
        for method in methods:
            f1 = result["aggregate"][group][method]["f1"]["mean"]
            assert headline["chrf"][group][method]["mean"] == pytest.approx(100 * f1)
    answers = [json.loads(line) for line in (tmp_path / "languages_single_answers.jsonl").read_text().splitlines()]
    assert all(a["f1"] == pytest.approx(a["chrf"] / 100) and a["correct"] == (a["chrf"] >= 50) for a in answers)
    assert all(a["in_context"] == (a["method"] == "icl") for a in answers)
    markdown = (tmp_path / "languages_single.md").read_text()
    assert "mean chrF" in markdown and "Correct = chrF >=" in markdown and "token F1 >=" not in markdown
    assert_nothing_held_out_was_trained_on(tmp_path, "languages_single", result)


def test_sequential_mode_limited_run(ws, tmp_path):
    methods = ["base", "icl", "sft"]
    result = run(ws, tmp_path, "sequential", methods)
    assert result["sequential"] is True and result["retention"]["tasks"] == ["kalamang", "nen"]
    matrix = result["headline"]["chrf_matrix"]
    assert matrix["rows_after"] == ["kalamang", "nen"] and set(matrix["methods"]) == set(methods)
    assert all(len(R) == 2 and all(v is not None for row in R for v in row) for R in matrix["methods"].values())
    kept = result["headline"]["first_language_kept"]["sft"]
    assert kept["after_last_night"] == matrix["methods"]["sft"][1][0]
    answers = [json.loads(line) for line in (tmp_path / "languages_sequential_answers.jsonl").read_text().splitlines()]
    icl = {(a["after"], a["task"]): a["in_context"] for a in answers if a["method"] == "icl"}
    # the context holds only the latest night's language: Kalamang is out of it after Nen's night
    assert icl == {("kalamang", "kalamang"): True, ("kalamang", "nen"): False,
                   ("nen", "kalamang"): False, ("nen", "nen"): True}
    assert "chrF matrix" in (tmp_path / "languages_sequential.md").read_text()
    assert_nothing_held_out_was_trained_on(tmp_path, "languages_sequential", result)
