"""Continual learning of new languages (issue 5; the paper's Figure 5): Kalamang, then Nen, graded by chrF.

    lmsleep bench languages --seeds 3                                  # make bench-languages: sequential, 12 lessons
    lmsleep bench languages --seeds 1 --option mode=single             # each language its own night, fresh model
    lmsleep bench languages --seeds 1 --limit 3 --model tiny --set seed.ks_steps=2

Data: the two Dictionaria CLDF dictionaries in ../shared/data/lowres_dictionaria (LMSLEEP_SHARED_DATA overrides the
folder; read its SOURCE.md): entries.csv (headwords), senses.csv (English glosses), examples.csv (sentences with
English translations). Kalamang rows whose `Translated_Text` is Indonesian and `alt_translation1` English are read
the other way round (SOURCE.md warns of them); an example with no English translation is not used.

A language is one night (task), its memories are **lessons**, built deterministically (the same for every seed):
1. Held-out sentences: examples of 3-10 words whose English has 2-14 words, at least two of whose words (and half of
   them) are headwords with a gloss, in a fixed shuffled order (seeded by the language's name), less any sentence or
   translation that a headword or gloss contains; the first `lessons` of them are the probe sentences. --limit K
   keeps the first K lessons.
2. Lesson i (one memory) = the dictionary entries (headword, part of speech, glosses) of the words of held-out
   sentence i, plus up to `examples_per_lesson` other example sentences of those entries with their translations.
   An example is never used when its text or translation contains, or is, any held-out sentence or translation
   of either language.
3. Probes of lesson i: "Translate this Kalamang sentence into English: <held-out sentence>" -> its English
   translation (the sentence and its translation are in NO memory: `probe_leaks` checks every load), and, with
   probes=sentences,words (the default), "What does the Kalamang word "<w>" mean in English?" -> w's glosses, for
   the lesson's longest headword (this one is knowledge incorporation, as in SQuAD: the gloss is in the lesson, the
   question is not).

Modes (--option mode=...):
- sequential (default; Figure 5): Kalamang's night, then Nen's on the model it left, every probe asked after each
  night (the harness's R matrix). The context holds only the latest night's language (`icl_context`): `icl` answers
  Kalamang after Nen's night without Kalamang's lessons, as the paper's ICL loses a language once its context is
  reset. Results: languages_sequential.*
- single: each language its own night from the base model (the single-language gains). Results: languages_single.*

Grading (`grade`): chrF (lmsleep.bench.chrf: character 6-grams, beta 2, sacreBLEU's default) of the prediction
against the reference translation, 0-100; correct = chrF >= `threshold` (default 50). The harness aggregates "f1"
per group with intervals over seeds: here f1 = chrF/100, so its "f1" mean IS the mean sentence chrF / 100; the
headline reports it x100 as mean chrF (per method, per language, 95% interval) and, for a sequential run, the chrF
matrix (row = after which night, column = which language) per method. The "accuracy" columns and the harness's
R/BWT/FWT use the thresholded "correct".

Always read `base` first: the dictionaries have been on the web since 2021, so a pretrained model may have seen
them. These dictionaries are not the MTOB benchmark; never report these numbers as MTOB numbers.
"""

from __future__ import annotations

import csv
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from lmsleep.bench.chrf import chrf
from lmsleep.bench.harness import Benchmark, Task
from lmsleep.bench.squad import shared_data
from lmsleep.config import Params

LANGUAGES = {"kalamang": "Kalamang", "nen": "Nen"}  # folder -> display name, in Figure 5's order
MODES = ("sequential", "single")
PROBE_KINDS = ("sentences", "words")
WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
# Enough to tell an English translation from an Indonesian / Papuan Malay one (SOURCE.md: some Kalamang rows swap).
ENGLISH = set("the a an is are was were to of and he she they i you it we in on with not his her their my your "
              "will be have has this that there what who go went".split())
MALAY = set("dia dan yang di ke tidak dengan sama itu ini saya kau dong sudah mau pergi ada untuk dari kita kami "
            "mereka juga tapi su pi ko sa de ma baru lagi karena punya tra deng".split())


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def is_english(text: str) -> bool:
    tokens = words(text)
    return sum(t in ENGLISH for t in tokens) > sum(t in MALAY for t in tokens)


def normalise(text: str) -> str:
    return " ".join(words(text))


# ---------------------------------------------------------------- reading a CLDF dictionary


@dataclass(frozen=True)
class Entry:
    id: str
    headword: str
    pos: str
    gloss: str  # the English glosses of its senses, "; "-joined


@dataclass(frozen=True)
class Example:
    id: str
    text: str  # in the language
    english: str
    entry_ids: tuple[str, ...]


@dataclass(frozen=True)
class Dictionary:
    language: str  # display name
    entries: dict[str, Entry]
    examples: tuple[Example, ...]
    by_headword: dict[str, tuple[str, ...]]  # lower-cased headword -> entry ids (with a gloss)


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the languages benchmark reads ../shared/data/lowres_dictionaria "
                                "(or set LMSLEEP_SHARED_DATA)")
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _gloss(description: str) -> str:
    return " ".join(re.sub(r"\([^)]*\)", " ", description).split()).strip(" ;,")


@lru_cache(maxsize=4)
def read_dictionary(folder: str, language: str) -> Dictionary:
    """entries.csv + senses.csv + examples.csv of one Dictionaria CLDF dictionary."""
    root = Path(folder)
    senses = _rows(root / "senses.csv")
    glosses: dict[str, list[str]] = {}
    sense_entry = {}
    for sense in senses:
        sense_entry[sense["ID"]] = sense["Entry_ID"]
        gloss = _gloss(sense.get("Description") or "")
        if gloss and gloss not in glosses.setdefault(sense["Entry_ID"], []):
            glosses[sense["Entry_ID"]].append(gloss)
    entries, by_headword = {}, {}
    for row in _rows(root / "entries.csv"):
        gloss = "; ".join(glosses.get(row["ID"], []))
        headword = (row.get("Headword") or "").strip()
        if not gloss or not headword:
            continue
        entries[row["ID"]] = Entry(row["ID"], headword, (row.get("Part_Of_Speech") or "").strip(), gloss[:120])
        by_headword.setdefault(headword.lower(), []).append(row["ID"])
    examples, seen = [], set()
    for row in _rows(root / "examples.csv"):
        text, english = (row.get("Primary_Text") or "").strip(), (row.get("Translated_Text") or "").strip()
        if not is_english(english) and is_english(row.get("alt_translation1") or ""):
            english = row["alt_translation1"].strip()  # a swapped Kalamang row
        key = normalise(text)
        if not text or not key or not is_english(english) or key in seen:
            continue
        seen.add(key)
        ids = [sense_entry.get(s.strip()) for s in (row.get("Sense_IDs") or "").split(";")]
        examples.append(Example(row["ID"], text, english, tuple(i for i in ids if i in entries)))
    return Dictionary(language, entries, tuple(examples), {k: tuple(v) for k, v in by_headword.items()})


def dictionary_folder(name: str) -> Path:
    return shared_data() / "lowres_dictionaria" / name


# ---------------------------------------------------------------- lessons (memories) and their held-out probes


def _known(dictionary: Dictionary, text: str) -> list[Entry]:
    """The entries of the distinct words of `text` that are headwords (first entry per headword)."""
    out = []
    for word in dict.fromkeys(words(text)):
        ids = dictionary.by_headword.get(word)
        if ids:
            out.append(dictionary.entries[ids[0]])
    return out


def held_out_sentences(dictionary: Dictionary, count: int) -> list[Example]:
    """The probe sentences: the first `count` usable examples in a fixed order seeded by the language's name."""
    usable = []
    for example in dictionary.examples:
        n_words, n_english = len(words(example.text)), len(words(example.english))
        known = _known(dictionary, example.text)
        if 3 <= n_words <= 10 and 2 <= n_english <= 14 and len(known) >= 2 and 2 * len(known) >= n_words:
            usable.append(example)
    random.Random(f"languages-{dictionary.language}").shuffle(usable)
    # never hold out a sentence that a lesson's word list would quote (a multi-word headword, a gloss that is a whole
    # translation); filtered after the shuffle, so that the selection does not move when this drops nothing
    entry_text = "|".join(normalise(f"{e.headword}|{e.gloss}") for e in dictionary.entries.values())
    usable = [x for x in usable if normalise(x.text) not in entry_text and normalise(x.english) not in entry_text]
    return usable[:count]


def build_lessons(dictionary: Dictionary, count: int, examples_per_lesson: int = 2,
                  probe_kinds: tuple[str, ...] = PROBE_KINDS,
                  also_held_out: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """`count` lessons (memory records), each built around one held-out sentence; see the module docstring.
    `also_held_out`: texts held out elsewhere (the other languages' probe sentences and translations), which no
    example of these lessons may contain either."""
    language = dictionary.language
    held = held_out_sentences(dictionary, count)
    banned = [normalise(x) for e in held for x in (e.text, e.english)] + [normalise(x) for x in also_held_out]
    by_entry: dict[str, list[Example]] = {}
    for example in dictionary.examples:
        texts = (normalise(example.text), normalise(example.english))
        if any(b in t for b in banned for t in texts):
            continue  # a held-out sentence or translation (or a text containing one) never enters a lesson
        for entry_id in example.entry_ids:
            by_entry.setdefault(entry_id, []).append(example)
    lessons = []
    for i, sentence in enumerate(held):
        entries = _known(dictionary, sentence.text)
        shown: list[Example] = []
        for entry in entries:
            for example in by_entry.get(entry.id, []):
                if len(shown) < examples_per_lesson and example not in shown and len(words(example.text)) <= 12:
                    shown.append(example)
        lines = [f"{language} lesson {i + 1}.", "Words:"]
        lines += [f"- {e.headword}" + (f" ({e.pos})" if e.pos else "") + f": {e.gloss}" for e in entries]
        if shown:
            lines.append("Examples:")
            lines += [f"- {language}: {x.text}\n  English: {x.english}" for x in shown]
        probes = []
        if "sentences" in probe_kinds:
            probes.append({"question": f"Translate this {language} sentence into English: {sentence.text}",
                           "answer": sentence.english})
        if "words" in probe_kinds:
            word = max(entries, key=lambda e: len(e.headword))  # first of the longest: deterministic
            probes.append({"question": f'What does the {language} word "{word.headword}" mean in English?',
                           "answer": word.gloss})
        lessons.append({"id": f"{language.lower()}-{i + 1:03d}", "time": "2021-01-01T00:00:00Z",
                        "source": f"dictionaria:{language.lower()}/{sentence.id}", "kind": "document",
                        "text": "\n".join(lines), "probes": probes,
                        "meta": {"language": language, "held_out_example": sentence.id,
                                 "entries": [e.id for e in entries], "examples": [x.id for x in shown]}})
    return lessons


def probe_leaks(memories: list[dict[str, Any]]) -> list[str]:
    """Every way a held-out probe appears in a memory text: a probe question, or a held-out sentence or its
    translation (normalised: lower-case words), in ANY memory of the list. Empty = no leak."""
    texts = [normalise(m["text"]) for m in memories]
    leaks = []
    for memory in memories:
        for probe in memory.get("probes") or []:
            held = [probe["question"]]
            if "sentence into English: " in probe["question"]:
                held += [probe["question"].split("sentence into English: ", 1)[1], probe["answer"]]
            for text in held:
                if any(normalise(text) in t for t in texts):
                    leaks.append(f"{memory['id']}: {text!r}")
    return leaks


# ---------------------------------------------------------------- the benchmark


class LanguagesBenchmark(Benchmark):
    name = "languages"
    default_methods = ("base", "icl", "sft", "sleep_ks")

    def __init__(self, mode: str = "sequential", lessons: int = 12, threshold: float = 50.0,
                 languages: str = "kalamang,nen", probes: str = "sentences,words", examples_per_lesson: int = 2):
        if mode not in MODES:
            raise ValueError(f"languages: mode must be one of {MODES}, got {mode!r}")
        self.languages = [s.strip() for s in str(languages).split(",") if s.strip()]
        if not self.languages or any(s not in LANGUAGES for s in self.languages):
            raise ValueError(f"languages: languages must be a comma list of {tuple(LANGUAGES)}, got {languages!r}")
        self.probes = [s.strip() for s in str(probes).split(",") if s.strip()]
        if not self.probes or any(s not in PROBE_KINDS for s in self.probes):
            raise ValueError(f"languages: probes must be a comma list of {PROBE_KINDS}, got {probes!r}")
        if int(lessons) < 1 or int(examples_per_lesson) < 0 or not 0 <= float(threshold) <= 100:
            raise ValueError("languages: lessons >= 1, examples_per_lesson >= 0 and 0 <= threshold <= 100")
        self.mode, self.lessons, self.threshold = mode, int(lessons), float(threshold)
        self.examples_per_lesson = int(examples_per_lesson)
        self.sequential = mode == "sequential"
        self.result_name = f"languages_{mode}"

    def load(self, limit: int | None) -> list[Task]:
        dictionaries = {f: read_dictionary(str(dictionary_folder(f)), LANGUAGES[f]) for f in self.languages}
        # every language's held-out sentences and translations are banned from every lesson (in a sequential run a
        # Nen lesson that quoted a Kalamang probe's translation would leak it)
        held = tuple(x for d in dictionaries.values() for e in held_out_sentences(d, self.lessons)
                     for x in (e.text, e.english))
        tasks = []
        for folder, dictionary in dictionaries.items():
            lessons = build_lessons(dictionary, self.lessons, self.examples_per_lesson, tuple(self.probes), held)
            if len(lessons) < self.lessons:
                raise ValueError(f"languages: {folder} has only {len(lessons)} usable held-out sentences, "
                                 f"{self.lessons} lessons asked")
            tasks.append(Task(folder, folder, lessons[:limit] if limit else lessons))
        leaks = probe_leaks([m for t in tasks for m in t.memories])
        if leaks:  # cannot happen by construction; a guard against a change that breaks it
            raise ValueError(f"languages: held-out probes found in memory texts: {leaks[:5]}")
        return tasks

    def icl_context(self, row: dict[str, Any], seen: list[str]) -> str | None:
        """Only the latest night's language is in the context (the context is reset when a new language comes)."""
        return row["context"] if seen and row["night"] == seen[-1] else None

    grading_note = ("Correct = chrF >= the threshold option (default 50); the F1 column is mean chrF / 100 "
                    "(lmsleep.bench.chrf).")

    def grade(self, prediction: str, answer: str, params: Params) -> dict[str, Any]:
        score = chrf(prediction.strip(), answer.strip())
        return {"correct": score >= self.threshold, "f1": score / 100, "chrf": score}

    def headline(self, result: dict[str, Any]) -> dict[str, Any]:
        """Mean chrF (= the harness's f1 x 100) per language and method; for sequential runs the chrF matrix."""
        def scaled(stat):
            return {"mean": None if stat["mean"] is None else 100 * stat["mean"],
                    "ci95": [100 * v for v in stat["ci95"]] if stat.get("ci95") else None,
                    "per_seed": [None if v is None else 100 * v for v in stat["per_seed"]]}

        out: dict[str, Any] = {"metric": "mean sentence chrF (0-100) = the harness's f1 mean x 100",
                               "mode": self.mode, "threshold": self.threshold,
                               "chrf": {group: {method: scaled(e["f1"]) for method, e in per.items()}
                                        for group, per in result["aggregate"].items()}}
        if self.sequential:
            names = [t["name"] for t in result["tasks"]]
            matrices = {}
            for method in result["methods"]:
                cells = {}
                for s in result["scores"]:
                    if s["method"] == method and s["f1"] is not None:
                        cells.setdefault((s["after"], s["task"]), []).append(100 * s["f1"])
                matrices[method] = [[sum(cells[(a, b)]) / len(cells[(a, b)]) if (a, b) in cells else None
                                     for b in names] for a in names]
            out["chrf_matrix"] = {"rows_after": names, "columns": names, "methods": matrices}
            if len(names) > 1:  # the first language: right after its night vs after the last night
                out["first_language_kept"] = {m: {"after_own_night": R[0][0], "after_last_night": R[-1][0]}
                                              for m, R in matrices.items()}
        return out

    def headline_markdown(self, headline: dict[str, Any]) -> list[str]:
        def cell(stat):
            if stat["mean"] is None:
                return "n/a"
            return f"{stat['mean']:.1f}" + (f" [{stat['ci95'][0]:.1f}, {stat['ci95'][1]:.1f}]" if stat["ci95"] else "")

        groups = list(headline["chrf"])
        methods = list(dict.fromkeys(m for g in groups for m in headline["chrf"][g]))
        when = "after the last night" if self.sequential else "after its own night"
        lines = [f"## Headline: mean chrF ({headline['mode']}; {when}; 95% interval over seeds)", "",
                 "| method | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
        lines += [f"| {m} | " + " | ".join(cell(headline["chrf"][g][m]) for g in groups) + " |" for m in methods]
        if "chrf_matrix" in headline:
            names = headline["chrf_matrix"]["columns"]
            lines += ["", "chrF matrix (row: after that night; column: that language's probes; mean over seeds):", "",
                      "| method | after | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
            for method, R in headline["chrf_matrix"]["methods"].items():
                lines += [f"| {method} | {a} | " + " | ".join("n/a" if v is None else f"{v:.1f}" for v in row) + " |"
                          for a, row in zip(names, R)]
        return lines + ["", f"correct (the accuracy columns, R/BWT/FWT) = chrF >= {headline['threshold']:g}."]


BENCHMARK = LanguagesBenchmark()
