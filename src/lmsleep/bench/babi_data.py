"""bAbI data for the long-horizon benchmark (lmsleep.bench.babi): the task files, questions with their supporting
facts, the word vocabulary, whole-sentence windows, and the long test stories (a question's head, then filler that
mentions none of its entities, packed into exactly L windows). See lmsleep.bench.babi's docstring for the protocol."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path

SPECIALS = ["<pad>", "<bos>", "<unk>", "|"]
PAD, BOS, UNK, SEP = range(4)
WHERE = re.compile(r"^where is (.+?)\s*\?$")

# ---------------------------------------------------------------- data


@dataclass
class Question:
    task: str
    story: int  # index of the story in its file
    facts: list[str]  # the story's statements before the question, in order
    supports: list[int]  # indices into facts
    question: str  # as in bAbI, e.g. "Where is Mary?"
    answer: str


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+|[.?]", text.lower())


def task_file(root: Path, task: str, split: str) -> Path:
    found = sorted((root / "babi" / "en").glob(f"{task}_*_{split}.txt"))
    if not found:
        raise FileNotFoundError(f"no bAbI file {task}_*_{split}.txt in {root / 'babi' / 'en'}: the benchmark reads "
                                "../shared/data/babi (or set LMSLEEP_SHARED_DATA)")
    return found[0]


def read_questions(path: Path, task: str) -> list[Question]:
    """Every question of a bAbI file with its story so far (IDs restart at 1 for a new story)."""
    out: list[Question] = []
    story, lines, index_of = -1, [], {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        if not raw.strip():
            continue
        number, _, text = raw.partition(" ")
        if int(number) == 1:
            story, lines, index_of = story + 1, [], {}
        if "\t" in text:
            question, answer, supports = text.split("\t")[:3]
            out.append(Question(task, story, list(lines), [index_of[int(s)] for s in supports.split()],
                                question.strip(), answer.strip()))
        else:
            index_of[int(number)] = len(lines)
            lines.append(text.strip())
    return out


def cloze_of(question: str) -> list[str]:
    """'Where is Mary?' -> ['mary', 'is', 'in', 'the']; only where-is questions have one (qa1, qa2)."""
    match = WHERE.match(" ".join(words(question)))
    if not match:
        raise ValueError(f"no cloze form for {question!r}: the babi benchmark supports where-is tasks (qa1, qa2)")
    return match.group(1).split() + ["is", "in", "the"]


def entities(sentence: str) -> set[str]:
    """People (a sentence's first word) and objects (the noun after 'the' unless it is a place after 'to the')."""
    ws = [w for w in words(sentence) if w not in ".?"]
    found = {ws[0]} if ws else set()
    for i, w in enumerate(ws[:-1]):
        if w == "the" and (i == 0 or ws[i - 1] != "to"):
            found.add(ws[i + 1])
    return found


def question_entity(question: str) -> set[str]:
    return {w for w in cloze_of(question)[:-3] if w != "the"}


def entity_prompts(sentences: list[str]) -> list[list[str]]:
    """The chain's prompts for a window: one cloze per entity it mentions, in order of appearance."""
    seen, out = set(), []
    for s in sentences:
        ws = words(s)
        people = [ws[0]]
        objects = [ws[i + 1] for i, w in enumerate(ws[:-1]) if w == "the" and (i == 0 or ws[i - 1] != "to")
                   and ws[i + 1] not in ".?"]
        for e, form in [(p, [p]) for p in people] + [(o, ["the", o]) for o in objects]:
            if e not in seen:
                seen.add(e)
                out.append(["|", *form, "is", "in", "the"])
    return out


class Vocab:
    def __init__(self, tokens: list[str]):
        self.tokens = SPECIALS + [t for t in tokens if t not in SPECIALS]
        self.index = {t: i for i, t in enumerate(self.tokens)}

    def encode(self, ws: list[str]) -> list[int]:
        return [self.index.get(w, UNK) for w in ws]

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.tokens[i] for i in ids)


def sentence_ids(vocab: Vocab, sentence: str) -> list[int]:
    return vocab.encode(words(sentence))


def pack_windows(sentences: list[list[int]], window_tokens: int) -> list[list[int]]:
    """Whole sentences, greedily, into windows of at most window_tokens tokens (indices of sentences per window)."""
    windows: list[list[int]] = [[]]
    used = 0
    for i, s in enumerate(sentences):
        if len(s) > window_tokens:
            raise ValueError(f"a sentence of {len(s)} tokens does not fit a {window_tokens}-token window")
        if used + len(s) > window_tokens and windows[-1]:
            windows.append([])
            used = 0
        windows[-1].append(i)
        used += len(s)
    return windows


# ---------------------------------------------------------------- the base model


# ---------------------------------------------------------------- long stories


@dataclass
class LongStory:
    task: str
    length: int  # windows
    question: str
    answer: str
    windows: list[list[str]]  # sentences per window
    source: str  # "<task>/test/story<i>"
    window_ids: list[list[int]] = field(default_factory=list)


def build_stories(test: list[Question], vocab: Vocab, lengths: list[int], per_bin: int, window_tokens: int,
                  rng: random.Random) -> list[LongStory]:
    """Per length bin, `per_bin` stories: a test question's head, then filler (see the module docstring)."""
    heads = []
    for q in test:
        head = q.facts[min(q.supports):]
        if sum(len(sentence_ids(vocab, s)) for s in head) <= window_tokens:
            heads.append((q, head))
    rng.shuffle(heads)
    stories: list[LongStory] = []
    for length in lengths:
        made = 0
        while made < per_bin and heads:
            q, head = heads.pop()
            banned = question_entity(q.question).union(*(entities(q.facts[i]) for i in q.supports))
            filler = [s for other in {x.story: x for x in test if x.story != q.story}.values() for s in other.facts
                      if not entities(s) & banned]
            rng.shuffle(filler)
            sentences = list(head)
            for s in filler:
                ids = [sentence_ids(vocab, x) for x in sentences + [s]]
                if len(pack_windows(ids, window_tokens)) > length:
                    break
                sentences.append(s)
            ids = [sentence_ids(vocab, x) for x in sentences]
            packed = pack_windows(ids, window_tokens)
            if len(packed) != length:
                continue  # not enough filler for this length: try the next question
            windows = [[sentences[i] for i in w] for w in packed]
            stories.append(LongStory(q.task, length, q.question, q.answer, windows, f"{q.task}/test/story{q.story}",
                                     [[t for i in w for t in ids[i]] for w in packed]))
            made += 1
    return stories
