"""A seeded synthetic world of made-up people and their facts, for the `nights` benchmark (lmsleep.bench.nights).

    python -c "from lmsleep.bench.world import World; w = World(); print(w.nights[0][0]['text'])"

Every person has a made-up name ("Velmor Quist") and facts drawn from a few relations, each with a closed set of
values (so a model that has not read the fact can only guess: chance is a few percent): where they live (one of 60
made-up towns), their trade, the animal they keep, their favourite dish and the instrument they play:

    Velmor Quist lives in Anbrel. Velmor Quist keeps a grey heron.

The world is split, by name, into disjoint parts (no name occurs in two of them):
  pretraining   `people` people with all their facts: what the tiny model is pretrained on (documents, closed-book
                questions about half of them, in-context reading of their memories), plus a stream of fresh
                throw-away people for in-context reading (`pretraining_examples`)
  reference     held-out people whose documents are the perplexity reference text (never trained on)
  nights        `nights` nights of NEW people; each night has `facts_per_night` facts, `facts_per_memory` per memory,
                as memories in the project's format (docs/memories.md) with one held-out probe per fact

Questions come in two disjoint template families per relation: PROBE templates (the benchmark's held-out probes, and
in-context reading in pretraining) and WRITER templates (what the model learns to write when Knowledge Seeding asks it
for a question about a sentence). So a question the model writes about a night's memory is never a probe verbatim:
KS must generalise across paraphrase, like any consolidator.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from lmsleep.ks.samples import CLOZE, CONTINUATION, cloze_spans, messages, question_instruction
from lmsleep.prompts import question_messages

ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "qu", "r", "s", "st", "t", "th", "v",
          "w", "z", "sh", "c", "j")
VOWELS = ("a", "e", "i", "o", "u", "ae", "ou", "y")
CODAS = ("", "n", "r", "l", "m", "s", "st", "th", "nd", "rk", "x", "v")
JOBS = ("baker", "potter", "weaver", "miller", "fisher", "tailor", "brewer", "carpenter", "mason", "farmer",
        "shepherd", "painter", "glassblower", "smith", "cooper", "chandler", "tanner", "sailor", "gardener", "doctor",
        "teacher", "cook", "jeweller", "clockmaker", "bookbinder", "ropemaker", "beekeeper", "astronomer", "singer",
        "scribe")
COLOURS = ("grey", "black", "white", "red", "brown", "golden", "spotted", "blue", "green", "striped")
ANIMALS = ("heron", "goat", "cat", "dog", "owl", "horse", "crow", "hare", "tortoise", "parrot", "ferret", "pig",
           "swan", "lizard", "donkey", "goose", "fox", "hound", "sheep", "raven")
DISHES = ("porridge", "dumplings", "pancakes", "stew", "chowder", "omelette", "risotto", "goulash", "pie", "noodles",
          "curry", "flatbread", "meatballs", "soup", "trout", "sausages", "salad", "waffles", "crepes", "pudding")
INSTRUMENTS = ("lute", "harp", "fiddle", "flute", "drum", "horn", "bagpipe", "cello", "trumpet", "zither", "oboe",
               "mandolin", "accordion", "banjo", "piano", "clarinet")
TOWNS = 60  # made-up town names in the world (shared by every split: a town is a value, not a person)

# relation -> (statement templates, probe question templates, writer question templates); {n} name, {v} value
RELATIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "home": (("{n} lives in {v}.", "{n} has a house in {v}.", "{n} makes a home in the town of {v}."),
             ("Where does {n} live?", "In which town does {n} live?"),
             ("Which town is home to {n}?", "Where is the house of {n}?")),
    "job": (("{n} works as a {v}.", "{n} earns a living as a {v}.", "By trade, {n} is a {v}."),
            ("What is the job of {n}?", "What does {n} do for a living?"),
            ("Which trade does {n} follow?", "What work does {n} do?")),
    "pet": (("{n} keeps a {v}.", "{n} owns a {v}.", "{n} looks after a {v} at home."),
            ("What animal does {n} keep?", "Which pet does {n} have?"),
            ("What creature does {n} own?", "Which animal lives with {n}?")),
    "dish": (("The favourite dish of {n} is {v}.", "{n} likes to eat {v}.", "Every feast day, {n} cooks {v}."),
             ("What is the favourite dish of {n}?", "What food does {n} like best?"),
             ("Which dish does {n} love?", "What does {n} like to eat?")),
    "instrument": (("{n} plays the {v}.", "In the evenings, {n} plays the {v}.", "{n} has played the {v} for "
                    "years."),
                   ("Which instrument does {n} play?", "What instrument is played by {n}?"),
                   ("What does {n} play in the evenings?", "Which instrument has {n} learnt?")),
}


@dataclass(frozen=True)
class Fact:
    name: str
    relation: str
    value: str

    def sentence(self, rng: random.Random) -> str:
        return rng.choice(RELATIONS[self.relation][0]).format(n=self.name, v=self.value)

    def probe(self, rng: random.Random) -> dict[str, str]:
        return {"question": rng.choice(RELATIONS[self.relation][1]).format(n=self.name), "answer": self.value}

    def question(self, rng: random.Random, family: str) -> str:
        templates = RELATIONS[self.relation][1 if family == "probe" else 2]
        return rng.choice(templates).format(n=self.name)


@dataclass
class Person:
    name: str
    facts: list[Fact] = field(default_factory=list)


def _syllable(rng: random.Random) -> str:
    return rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(_syllable(rng) for _ in range(syllables)).capitalize()


class Names:
    """Unique made-up names: no full name, and no town, is ever handed out twice."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def person(self) -> str:
        while True:
            name = f"{_word(self.rng, self.rng.choice((1, 2)))} {_word(self.rng, 2)}"
            if name not in self.used and len(name) <= 22:
                self.used.add(name)
                return name

    def town(self) -> str:
        while True:
            name = _word(self.rng, 2)
            if name not in self.used:
                self.used.add(name)
                return name


class World:
    """The whole world, deterministic in `seed`. Night people and reference people are drawn first, so the
    nights do not change when the pretraining settings do."""

    def __init__(self, seed: int = 0, nights: int = 30, facts_per_night: int = 8, facts_per_memory: int = 2,
                 people: int = 200, reference_people: int = 24):
        if nights < 1 or facts_per_night < 1 or facts_per_memory < 1 or people < 2:
            raise ValueError("world: nights, facts_per_night, facts_per_memory >= 1 and people >= 2 are required")
        if facts_per_memory > len(RELATIONS):
            raise ValueError(f"world: facts_per_memory must be <= {len(RELATIONS)} (one fact per relation)")
        if facts_per_night % facts_per_memory:
            raise ValueError(f"world: facts_per_night ({facts_per_night}) must be a multiple of facts_per_memory "
                             f"({facts_per_memory})")
        self.seed, self.n_nights, self.facts_per_night = seed, nights, facts_per_night
        self.facts_per_memory = facts_per_memory
        rng = random.Random(f"world-{seed}")
        self.names = Names(rng)
        self.towns = [self.names.town() for _ in range(TOWNS)]
        self._rng = rng
        self.night_people = [[self._person(facts_per_memory) for _ in range(facts_per_night // facts_per_memory)]
                             for _ in range(nights)]
        self.reference_people = [self._person(len(RELATIONS)) for _ in range(reference_people)]
        self.people = [self._person(len(RELATIONS)) for _ in range(people)]
        # closed-book questions are asked about half of the pretraining people only: the rest are known from their
        # documents alone (what a consolidator must make of a night's memory)
        self.qa_people = self.people[: people // 2]
        self._known = {p.name for p in self.people}

    def _value(self, relation: str, rng: random.Random) -> str:
        if relation == "home":
            return rng.choice(self.towns)
        if relation == "job":
            return rng.choice(JOBS)
        if relation == "pet":
            return f"{rng.choice(COLOURS)} {rng.choice(ANIMALS)}"
        if relation == "dish":
            return rng.choice(DISHES)
        if relation == "instrument":
            return rng.choice(INSTRUMENTS)
        raise ValueError(f"unknown relation {relation!r}")

    def _person(self, n_facts: int) -> Person:
        name = self.names.person()
        relations = self._rng.sample(list(RELATIONS), n_facts)
        return Person(name, [Fact(name, r, self._value(r, self._rng)) for r in relations])

    def fresh_name(self, rng: random.Random) -> str:
        """A made-up name for a throw-away person: drawn from `rng` (deterministic), never one the world handed out
        (night, reference or pretraining people, towns)."""
        while True:
            name = f"{_word(rng, rng.choice((1, 2)))} {_word(rng, 2)}"
            if name not in self.names.used and len(name) <= 22:
                return name

    def fresh_person(self, rng: random.Random, n_facts: int) -> Person:
        """A throw-away person for in-context reading in pretraining (a new name, never a night's or reference's)."""
        name = self.fresh_name(rng)
        relations = rng.sample(list(RELATIONS), n_facts)
        facts = [Fact(name, r, self._value(r, rng)) for r in relations]
        return Person(name, facts)

    # ------------------------------------------------------------ texts

    @staticmethod
    def text(person: Person, rng: random.Random) -> str:
        return " ".join(f.sentence(rng) for f in person.facts)

    @cached_property
    def nights(self) -> list[list[dict[str, Any]]]:
        """The nights' memories (docs/memories.md format): one memory per new person, one probe per fact."""
        out = []
        for i, people in enumerate(self.night_people):
            rng = random.Random(f"night-{self.seed}-{i}")
            night = []
            for j, person in enumerate(people):
                night.append({
                    "id": f"world{self.seed}-n{i:02d}-m{j:02d}", "time": f"2026-12-{1 + i % 28:02d}T09:{j:02d}:00Z",
                    "source": f"world:seed{self.seed}", "kind": "document", "text": self.text(person, rng),
                    "probes": [f.probe(rng) for f in person.facts],
                    "meta": {"lang": "en", "world_seed": self.seed, "night": i, "person": person.name}})
            out.append(night)
        return out

    @cached_property
    def reference_text(self) -> str:
        """Documents about the held-out reference people: world text the model never trains on."""
        rng = random.Random(f"reference-{self.seed}")
        return "\n\n".join(self.text(p, rng) for p in self.reference_people)

    def drift_text(self, people: int = 24) -> str:
        """Documents about throw-away people (never a night's, reference or pretraining person): world text for the
        drift guard (seed.ks_drift_text), apart from the reference text the promotion gate reads."""
        rng = random.Random(f"drift-{self.seed}")
        return "\n\n".join(self.text(self.fresh_person(rng, len(RELATIONS)), rng) for _ in range(people))

    def reserved_names(self) -> set[str]:
        """Every person of the nights and the reference text: never in pretraining."""
        return {p.name for night in self.night_people for p in night} | {p.name for p in self.reference_people}

    def reading_anchors(self, count: int, seed: int = 0) -> list[str]:
        """`count` in-context reading prompts about throw-away people (never a night's, reference or pretraining
        person), in the evaluate stage's format with WRITER wording (never a probe's): the user turn of
        question_messages(question, memory). As KS anchors (seed.ks_anchor_file), the teacher is the model as it is,
        so tonight's expert is trained to leave reading other people's texts alone."""
        rng = random.Random(f"reading-anchors-{self.seed}-{seed}")
        out = []
        for _ in range(count):
            person = self.fresh_person(rng, rng.randint(1, 3))
            fact = rng.choice(person.facts)
            out.append(question_messages(fact.question(rng, "writer"), self.text(person, rng))[0]["content"])
        return out

    def reading_guard(self, count: int = 48) -> list[dict[str, str]]:
        """`count` held-out reading items about throw-away people ({"text", "question" in WRITER wording, "answer"}):
        the drift guard's reading check (seed.ks_reading_file). Drawn apart from the reading anchors (its own
        random stream), so what the guard measures is never what a night trained on. The answer starts with a space,
        as the world model's replies do (lmsleep.bench.nights._encode)."""
        rng = random.Random(f"reading-guard-{self.seed}")
        out = []
        for _ in range(count):
            person = self.fresh_person(rng, rng.randint(1, 3))
            fact = rng.choice(person.facts)
            out.append({"text": self.text(person, rng), "question": fact.question(rng, "writer"),
                        "answer": " " + fact.value})
        return out

    # ------------------------------------------------------------ the pretraining corpus

    def pretraining_examples(self, count: int, seed: int = 0) -> list[dict[str, Any]]:
        """`count` examples, each {"kind", "prompt" (chat messages or None), "text"}: a document (plain text) or a
        chat turn. Kinds and shares (MIX; WARMUP_MIX for the first WARMUP_SHARE of them):

          document        a pretraining person's facts in random order and wording
          qa_context      a (fresh or known) person's memory in context, a question in the evaluate stage's format
                          (lmsleep.prompts.question_messages) with probe or writer wording -> the value
          qa_closed       a question about a known person (half of them), no context -> the value
          write_question  KS's question-writing prompt (lmsleep.ks.samples.question_instruction) about one sentence
                          of a memory in context -> a WRITER-template question about that sentence's fact
          complete        KS's "Complete this sentence from the text: <first words>" with the memory in context (or,
                          for known people, without) -> the whole sentence
          cloze           KS's fill-in-the-blank with the memory in context -> the sentence restated
          repeat          "Repeat the text word for word." with the memory in context -> the memory (copying)
        """
        rng = random.Random(f"pretrain-{self.seed}-{seed}")
        out = []
        for i in range(count):
            mix = WARMUP_MIX if i < WARMUP_SHARE * count else MIX
            kind = rng.choices(list(mix), list(mix.values()))[0]
            out.append(self._example(kind, rng))
        return out

    def _memory_person(self, rng: random.Random) -> Person:
        """A person as a memory shows them: usually a fresh one with a few facts, sometimes a known one."""
        if rng.random() < 0.3:
            known = rng.choice(self.people)
            return Person(known.name, rng.sample(known.facts, rng.randint(1, len(known.facts))))
        return self.fresh_person(rng, rng.randint(1, 3))

    def _example(self, kind: str, rng: random.Random) -> dict[str, Any]:
        if kind == "document":
            person = rng.choice(self.people)
            facts = person.facts[:]
            rng.shuffle(facts)
            return {"kind": kind, "prompt": None, "text": " ".join(f.sentence(rng) for f in facts)}
        if kind == "qa_closed":
            person = rng.choice(self.qa_people)
            fact = rng.choice(person.facts)
            family = rng.choice(("probe", "writer"))
            return {"kind": kind, "prompt": question_messages(fact.question(rng, family)), "text": fact.value}
        person = self._memory_person(rng)
        sentences = [(f, f.sentence(rng)) for f in person.facts]
        memory = " ".join(s for _, s in sentences)
        if rng.random() < 0.1:  # now and then a second person in the same text: find the right one
            other = self.fresh_person(rng, rng.randint(1, 3))
            extra = " ".join(f.sentence(rng) for f in other.facts)
            memory = f"{memory} {extra}" if rng.random() < 0.5 else f"{extra} {memory}"
        fact, sentence = rng.choice(sentences)
        if kind == "qa_context":
            family = "probe" if rng.random() < 0.6 else "writer"
            return {"kind": kind, "prompt": question_messages(fact.question(rng, family), memory), "text": fact.value}
        if kind == "write_question":
            return {"kind": kind, "prompt": messages(question_instruction(sentence), memory),
                    "text": fact.question(rng, "writer")}
        if kind == "complete":
            words = sentence.split()
            k = rng.randint(min(3, len(words)), max(3, len(words) // 2))
            in_context = person.name not in self._known or rng.random() < 0.5
            prompt = messages(CONTINUATION + " ".join(words[:k]), memory if in_context else None)
            return {"kind": kind, "prompt": prompt, "text": sentence}
        if kind == "repeat":
            return {"kind": kind, "prompt": messages(REPEAT, memory), "text": memory}
        if kind == "cloze":
            spans = cloze_spans(sentence) or [(0, 0)]
            start, end = rng.choice(spans)
            blanked = sentence[:start] + "___" + sentence[end:] if end else sentence
            return {"kind": kind, "prompt": messages(CLOZE + blanked, memory), "text": sentence}
        raise ValueError(f"unknown pretraining example kind {kind!r}")


MIX = {"document": 0.08, "qa_context": 0.55, "qa_closed": 0.08, "write_question": 0.10, "complete": 0.08,
       "cloze": 0.06, "repeat": 0.05}
# The first WARMUP_SHARE of the corpus leans on copying (repeat a text, complete its sentences): a tiny model learns to
# look back into its context (induction) far sooner from long copies than from the few tokens of an answer.
WARMUP_MIX = {"document": 0.05, "qa_context": 0.45, "qa_closed": 0.05, "write_question": 0.05, "complete": 0.15,
              "cloze": 0.05, "repeat": 0.2}
WARMUP_SHARE = 0.2
REPEAT = "Repeat the text word for word."
