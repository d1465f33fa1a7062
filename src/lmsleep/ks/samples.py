"""The prompts Knowledge Seeding trains on, built from the memory text alone (never from probes).

    samples = build_samples(cms, tokenizer, memories, cfg, rng, teacher_off=lambda: cms.experts_off(...))

Every memory gives `ks_prompts_per_memory` prompts (`ks_question_share` of them questions, `ks_cloze_share` clozes,
the rest completions), spread over its sentences so that every fact gets asked about (one question about the whole
text tends to come back as the same question, see docs/results.md):
  continuation  "Complete this sentence from the text: <first words of sentence i>"
                student: alone, teacher: memory in context. (SmolLM2's teacher drifts into invention on a bare
                "Continue: <words>" even with the memory in its context; asked to complete a sentence "from the text"
                it mostly restates the memory.)
  cloze         "Fill in the blank (___) with the missing words: <sentence with one fact blanked>", the fact being a
                run of capitalised words or a number (not the first word); the teacher, reading the memory, restates
                the sentence with the fact in place, so the student learns the fact from both sides of it
  question      a question the teacher wrote about sentence i of the memory, sampled with the memory in context
                ("... Write a short question whose answer is a name, place or number in this sentence"), then put
                to both in the evaluate stage's own format (lmsleep.prompts.question_messages). A "question" without
                a question mark, or of fewer than three words, is dropped: it teaches nothing. Three tries are
                sampled per sentence; `ks_phrasings_per_question` of them (distinct ones) are kept, default 1.
                With `ks_teacher_hint`, the teacher reads the question's sentence once more after the memory
                ("The answer is in this sentence: ..."; `hinted_memory`): the student's prompt is the same.
  entity        (`ks_entity_questions` per memory, default 0) "Who or what is <name>?" for the memory's names in
                order of first mention (`memory_names`), put like a question: the self-written questions mostly ask
                FOR a name ("Who is the archivist?"), so without these the student meets each name only as an
                answer, never as what is asked about ("What position does Halvard Brecken hold?")
  replay        earlier nights' prompts (lmsleep.stages.seed.replay_prompts); student prompt == teacher prompt (no
                memory): that knowledge is already in the weights and the student must keep it (retention). A share
                (`ks_replay_memory_share`) is read again: the teacher reads that night's memory and is scored on the
                answer that night's teacher wrote, so what has faded is taught again, not only what is left kept.
  reading       (`ks_reading_share` of tonight's prompts and `ks_replay_reading_share` of the re-read replays,
                after the teacher has written y) the same prompt and y with the memory in context for the student
                too: the expert must not change what the model answers while it reads a memory (the nights
                benchmark's carried model lost its in-context reading without this)
  grounding     (`ks_grounded_only`, after the teacher has written y) tonight's memory prompts whose y names a name or
                number that neither the memory nor the prompt holds ("a person named Huggy", "123 Main Street") are
                dropped before scoring (`ungrounded_names`): a 135M teacher invents with the memory in context, and
                the student would learn the invention as a fact
  anchor        `ks_anchor_prompts` requests from `ks_anchor_file` (bundled: general requests; the nights benchmark's
                world writes in-context reading anchors), teacher = the model as it is: the expert must leave that
                behaviour alone (the first night has nothing to replay).
A Sample's teacher completion y and the teacher's log-probs over y are filled in later (lmsleep.ks.teacher).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmsleep.grading import normalize
from lmsleep.ks.rollout import sample_completions, text_stop_ids
from lmsleep.memory import training_text
from lmsleep.prompts import question_messages

QUESTION_TOKENS = 32  # longest self-written question
QUESTION_ENDS = "?"  # clean_question reads up to the first '?': writing stops there (a line break may lead, so not it)
QUESTION_TRIES = 3  # samples per asked question; the first real question wins (a 135M writer often answers instead)
CONTINUATION = "Complete this sentence from the text: "
CLOZE = "Fill in the blank (___) with the missing words: "
# a fact's surface: capitalised word runs ("Mira Kovalenko", "Orrinwick Lanternmakers' Guild") and numbers ("1873", "21:30")
_FACT = re.compile(r"\b(?:[A-Z][\w'-]*(?:\s+(?:of\s+|the\s+)?[A-Z][\w'-]*)*|\d[\d:.,]*\d|\d)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_WORD = re.compile(r"\w+")
# words too common to tell which sentence an answer came from
_STOPWORDS = frozenset("the and for from with was were are has have had does did its his her their them they this "
                       "that these those who whom whose what which where when why how there here not yes into onto "
                       "out about than then also very".split())
_SENTENCE_START = re.compile(r"(?:^|[.!?:]\s+|\n\s*)[\"'(]?(\w+)")
_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
          "seventeen eighteen nineteen").split()
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_NUMBER_WORDS = re.compile(r"\b(" + "|".join(_TENS) + r")(?:[- ](" + "|".join(_UNITS[1:10]) + r"))?\b|\b("
                           + "|".join(_UNITS) + r")\b", re.IGNORECASE)


@dataclass(eq=False)  # identity, not field equality (fields hold tensors)
class Sample:
    memory_id: str
    kind: str  # continuation | question | on-policy
    student_prompt: list[int]
    teacher_prompt: list[int]
    prompt_text: str  # what the student is asked (for the audit)
    completion: list[int]  # y ([] until the teacher has written it)
    # the teacher's next-token log-probs over y, computed once: [len(y), k] with their vocabulary ids [len(y), k]
    # (top-k cache), or [len(y), vocab] with ids None (full distribution)
    teacher_logprobs: torch.Tensor | None = None
    teacher_ids: torch.Tensor | None = None
    source: str = "memory"  # "memory" (tonight), "replay:<night>" (an earlier night's prompt), "reading", "anchor"
    asked: str = ""  # what of the memory the prompt asks for: a question's sentence, a cloze's blanked words ("" else)

    @property
    def scored(self) -> bool:
        return self.teacher_logprobs is not None

    @property
    def rereads(self) -> bool:
        """A replayed prompt whose teacher reads its night's memory again (seed.ks_replay_memory_share)."""
        return self.source.startswith("replay") and self.student_prompt != self.teacher_prompt

    def audit(self, tokenizer) -> dict[str, str]:
        return {"memory_id": self.memory_id, "kind": self.kind, "source": self.source, "prompt": self.prompt_text,
                "completion": tokenizer.decode(self.completion, skip_special_tokens=True)}


def draw_batch(pool: list[Sample], order: list[Sample], size: int, rng: random.Random) -> list[Sample]:
    """The next `size` samples of a shuffled pass over `pool` (`order` holds the rest of the pass and is refilled,
    reshuffled, when it runs out): every sample comes back once per pass."""
    batch = []
    for _ in range(min(size, len(pool))):
        if not order:
            order.extend(pool)
            rng.shuffle(order)
        batch.append(order.pop())
    return batch


def sentences(text: str) -> list[str]:
    """The memory's sentences of at least three words (the whole text if it has none)."""
    parts = [s.strip() for s in _SENTENCE_END.split(text.strip())]
    return [s for s in parts if len(s.split()) >= 3] or [text.strip()]


def messages(instruction: str, memory: str | None) -> list[dict[str, str]]:
    content = instruction if memory is None else f"Text:\n{memory.strip()}\n\n{instruction}"
    return [{"role": "user", "content": content}]


def encode(tokenizer, chat: list[dict[str, str]]) -> list[int]:
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def question_instruction(sentence: str) -> str:
    return (f"Sentence: {sentence}\n\nWrite a short question whose answer is a name, place or number in this "
            "sentence. Reply with the question only.")


def clean_question(text: str) -> str | None:
    """The first line up to its first '?', or None when that is not a question of at least three words."""
    line = text.strip().split("\n")[0]
    if "?" not in line:
        return None
    line = line[: line.index("?") + 1].strip()
    return line if len(line.split()) >= 3 else None


def distinct_questions(tries: list[str], keep: int, topic: frozenset[str] | None = None) -> list[str]:
    """The first `keep` real questions among the sampled tries, in order, none a repeat of another (after the
    grader's normalisation); with `topic` (`on_topic`'s words), only questions that share one of its words."""
    kept: list[str] = []
    for text in tries:
        q = clean_question(text)
        if q is not None and topic is not None and not _content_words(q) & topic:
            continue
        if q is not None and normalize(q) not in {normalize(k) for k in kept}:
            kept.append(q)
        if len(kept) == keep:
            break
    return kept


def on_topic(memory: str) -> frozenset[str]:
    """The words a question about `memory` should share with it (seed.ks_on_topic_questions): the memory's content
    words, less those of the writing instruction ("name", "place", "number", "sentence", "question"...), which a
    question may echo without asking anything of the memory."""
    return frozenset(_content_words(memory) - _content_words(question_instruction("")))


def cloze_spans(sentence: str) -> list[tuple[int, int]]:
    """Where a fact sits in a sentence: runs of capitalised words and numbers, not the sentence's first word."""
    return [(m.start(), m.end()) for m in _FACT.finditer(sentence) if m.start() > 0]


ENTITY_QUESTION = "Who or what is {name}?"


_OPENERS = _STOPWORDS | frozenset("in on at by to of from after before earlier later every all".split())
_CALENDAR = frozenset("monday tuesday wednesday thursday friday saturday sunday january february march april may "
                      "june july august september october november december".split())


def memory_names(text: str) -> list[str]:
    """The names a memory mentions, each once, in order of first mention: runs of capitalised words, but a lone word
    that opens a sentence, a line or a speaker's turn (capitalised anyway: "When", "Thanks") only where it is also
    met inside one; a leading "The" dropped; no numbers, days or months; three letters or more."""
    opens = {m.start(1) for m in _SENTENCE_START.finditer(text)}
    found: list[str] = []
    for m in _FACT.finditer(text):
        words = m.group().split()
        while len(words) > 1 and words[0].lower() in _OPENERS:  # "In the Kelldrum", "The Quillmarsh"
            words = words[1:]
        name = " ".join(words)
        if m.start() in opens and name == m.group() and len(words) == 1:  # "Pavel Odinsky is ..." stays
            continue
        if name[0].isalpha() and len(name) >= 3 and name.lower() not in _CALENDAR and name not in found:
            found.append(name)
    return found


def _known_words(texts: tuple[str, ...]) -> set[str]:
    """Every word of the texts, lower-cased, plus the digits of their spelled numbers below 100 ("forty-two" -> 42)."""
    known = {w.lower() for text in texts for w in _WORD.findall(text)}
    for text in texts:
        for m in _NUMBER_WORDS.finditer(text):
            tens, unit, alone = (g.lower() if g else g for g in m.groups())
            known.add(str(_UNITS.index(alone)) if alone else str(_TENS[tens] + (_UNITS.index(unit) if unit else 0)))
    return known


def ungrounded_names(completion: str, *sources: str) -> list[str]:
    """The names and numbers of `completion` that none of `sources` (the memory, the prompt) holds: capitalised words
    not at the start of a sentence or line, and words with a digit. A last word cut off by the token limit counts
    when no known word starts with it ("Bisc" of "Biscuit" does not)."""
    known = _known_words(sources)
    starts = {m.start(1) for m in _SENTENCE_START.finditer(completion)}
    words = list(_WORD.finditer(completion))
    found: list[str] = []
    for i, m in enumerate(words):
        word = m.group()
        named = (word[0].isupper() and m.start() not in starts) or any(c.isdigit() for c in word)
        if not named or word.lower() in known or word in found:
            continue
        cut_off = i == len(words) - 1 and m.end() == len(completion.rstrip())
        if cut_off and any(k.startswith(word.lower()) for k in known):
            continue
        found.append(word)
    return found


def _stem(word: str) -> str:
    """A crude stem, enough to match a question's words with the memory's ("captained", "captains" -> "captain")."""
    for suffix in ("ing", "ed", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def _content_words(text: str) -> set[str]:
    """Stems of the lower-cased words of three letters or more, and numbers (spelled ones as digits); no stopwords."""
    return {_stem(w) for w in _known_words((text,)) if (len(w) >= 3 or w.isdigit()) and w not in _STOPWORDS}


def answers_elsewhere(completion: str, asked: str, prompt: str, memory: str = "") -> bool:
    """True when y answers from another part of the memory than the one asked: it holds none of the words that
    `asked` (a question's sentence, a cloze's blank) adds to the prompt, nor those of any sentence of `memory` that
    the prompt matches better than `asked` (a question the writer let drift to another sentence is judged by that
    one). "Who is the archivist?", written about the archivist's sentence and answered with the treasurer's name from
    the next one, is caught. False when there is nothing to tell by: no `asked`, or a sentence whose every word is in
    the prompt already."""
    if not asked:
        return False
    prompt_words = _content_words(prompt)
    matched = len(_content_words(asked) & prompt_words)
    sources = [asked] + [t for t in sentences(memory) if len(_content_words(t) & prompt_words) > matched]
    expected = [_content_words(t) - prompt_words for t in sources]
    said = _content_words(completion)
    return all(expected) and not any(words & said for words in expected)


HINT = "The answer is in this sentence: "


def source_sentence(question: str, asked: str, memory: str) -> str:
    """The sentence of `memory` a question is about: the one it was written about (`asked`), unless another shares
    more of its content words (the 135M writer lets a question drift: "Who captains the Grey Heron?", written about
    the sentence on where it sails)."""
    words = _content_words(question)
    best, most = asked, len(_content_words(asked) & words)
    for sentence in sentences(memory):
        if len(_content_words(sentence) & words) > most:
            best, most = sentence, len(_content_words(sentence) & words)
    return best


def hinted_memory(memory: str, question: str, asked: str) -> str:
    """The teacher's context for a self-written question with seed.ks_teacher_hint: the memory, then the sentence
    that answers it (`source_sentence`), so the teacher copies from there instead of a neighbouring sentence."""
    return f"{memory.strip()}\n\n{HINT}{source_sentence(question, asked, memory)}"


def drop_ungrounded(samples: list[Sample], memories: dict[str, str], tokenizer, names: bool = True,
                    off_sentence: bool = False) -> tuple[list[Sample], list[dict]]:
    """(kept, dropped): tonight's memory prompts whose teacher y names something the memory and the prompt do not
    hold (`names`), or, with `off_sentence`, answers from another part of the memory than the one asked
    (`answers_elsewhere`), are dropped; every other sample (replay, anchors, prompts with no y yet) is kept as it is.
    Each dropped row is the sample's audit plus why: the names it invented ("ungrounded", maybe []) and, when
    checked, "off_sentence" with what was asked."""
    kept, dropped = [], []
    for s in samples:
        if s.source == "memory" and s.completion and s.memory_id in memories:
            y = tokenizer.decode(s.completion, skip_special_tokens=True)
            invented = ungrounded_names(y, memories[s.memory_id], s.prompt_text) if names else []
            elsewhere = off_sentence and answers_elsewhere(  # a cloze is judged by its blank alone
                y, s.asked, s.prompt_text, memories[s.memory_id] if s.kind == "question" else "")
            if invented or elsewhere:
                why = {"ungrounded": invented} | ({"off_sentence": s.asked} if elsewhere else {})
                dropped.append({**s.audit(tokenizer), **why})
                continue
        kept.append(s)
    return kept, dropped


def _plan(n: int, cfg) -> tuple[int, int, int]:
    """How a memory's n prompts split into (questions, clozes, completions)."""
    questions = round(n * cfg.ks_question_share)
    clozes = min(n - questions, round(n * cfg.ks_cloze_share))
    return questions, clozes, n - questions - clozes


def build_samples(model, tokenizer, memories: list[dict[str, Any]], cfg, rng: random.Random,
                  replay: list[dict[str, Any]] | None = None, anchors: list[str] | None = None) -> list[Sample]:
    """Question, cloze and completion prompts per memory, plus replay and anchor prompts; completions still empty.

    `model` is the TEACHER (the caller masks the new expert off): it writes the questions."""
    samples, asks = [], []

    def add(mid: str, kind: str, instruction: str, text: str, asked: str = "") -> None:
        samples.append(Sample(mid, kind, encode(tokenizer, messages(instruction, None)),
                              encode(tokenizer, messages(instruction, text)), instruction, [], asked=asked))

    for m in memories:
        mid, text = str(m["id"]), training_text(m)
        spread = sentences(text)
        offset = rng.randrange(len(spread))
        n_questions, n_clozes, n_completions = _plan(cfg.ks_prompts_per_memory, cfg)
        asks += [(mid, text, spread[(offset + j) % len(spread)]) for j in range(n_questions)]
        blanks = [(sentence, span) for sentence in spread for span in cloze_spans(sentence)]
        rng.shuffle(blanks)
        for sentence, (start, end) in blanks[:n_clozes]:
            add(mid, "cloze", CLOZE + sentence[:start] + "___" + sentence[end:], text, sentence[start:end])
        for j in range(n_completions):
            words = spread[(offset + n_questions + j) % len(spread)].split()
            k = rng.randint(min(3, len(words)), max(3, len(words) // 2))
            add(mid, "continuation", CONTINUATION + " ".join(words[:k]), text)
        for name in memory_names(text)[: getattr(cfg, "ks_entity_questions", 0)]:
            q = ENTITY_QUESTION.format(name=name)
            samples.append(Sample(mid, "question", encode(tokenizer, question_messages(q)),
                                  encode(tokenizer, question_messages(q, text)), q, [], asked=name))
    keep = max(1, min(QUESTION_TRIES, getattr(cfg, "ks_phrasings_per_question", 1)))
    on_topic_only = getattr(cfg, "ks_on_topic_questions", False)
    for (mid, text, sentence), questions in zip(asks, write_questions(model, tokenizer, asks, cfg.ks_temperature,
                                                                      keep, on_topic_only)):
        for q in questions:
            read = hinted_memory(text, q, sentence) if getattr(cfg, "ks_teacher_hint", False) else text
            samples.append(Sample(mid, "question", encode(tokenizer, question_messages(q)),
                                  encode(tokenizer, question_messages(q, read)), q, [], asked=sentence))
    return samples + replay_samples(tokenizer, replay or []) + anchor_samples(tokenizer, anchors or [])


def write_questions(model, tokenizer, asks: list[tuple[str, str, str]], temperature: float,
                    keep: int, on_topic_only: bool = False) -> list[list[str]]:
    """Per ask (memory id, memory text, sentence), up to `keep` distinct questions the model writes about the
    sentence with the memory in context, from at most QUESTION_TRIES samples each (one at temperature 0); with
    `on_topic_only`, a try that shares no word with its memory (`on_topic`) is no question.

    Sampled in rounds: each round asks again only where questions are still missing, as many samples as are
    missing; the first real questions of i.i.d. tries win, as when all QUESTION_TRIES were sampled up front. Most
    first tries are questions: the demo night decodes 128 sequences instead of 216 and takes a fifth less time (its
    generate calls are capped by KV-cache tokens, so their number barely falls; docs/results.md)."""
    chats = [encode(tokenizer, messages(question_instruction(sentence), text)) for _, text, sentence in asks]
    topics = [on_topic(text) if on_topic_only else None for _, text, _ in asks]
    tries: list[list[str]] = [[] for _ in asks]
    kept: list[list[str]] = [[] for _ in asks]
    most = QUESTION_TRIES if temperature > 0 else 1  # greedy decoding writes the same text every time it is asked
    while True:
        rows = [i for i in range(len(asks)) for _ in range(min(keep - len(kept[i]), most - len(tries[i])))]
        if not rows:
            return kept
        written = sample_completions(model, tokenizer, [chats[i] for i in rows], temperature, QUESTION_TOKENS,
                                     groups=[asks[i][0] for i in rows],  # each memory read once per round
                                     stop_ids=text_stop_ids(tokenizer, QUESTION_ENDS))
        for i, y in zip(rows, written):
            tries[i].append(tokenizer.decode(y, skip_special_tokens=True))
        for i in set(rows):
            kept[i] = distinct_questions(tries[i], keep, topics[i])


def reading_twins(samples: list[Sample], share: float, rng: random.Random,
                  replay_share: float = 0.0) -> list[Sample]:
    """Copies of round(share x n) of tonight's n memory prompts, and of round(replay_share x m) of the m replayed
    prompts read again (seed.ks_replay_memory_share), seeded choices, whose student reads the memory too: student
    prompt = teacher prompt, the teacher's y and log-probs shared (no extra teacher work). Trained with the rest, they
    pull the new expert's effect on an in-context answer to zero; the replayed ones make earlier nights' real texts
    the reading anchors, and leave a single night (nothing to replay) as it was."""
    for name, value in (("ks_reading_share", share), ("ks_replay_reading_share", replay_share)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"params: seed.{name} must be in [0, 1], got {value}")
    tonight = [s for s in samples if s.source == "memory"]
    reread = [s for s in samples if s.rereads]
    chosen = [s for group, value in ((tonight, share), (reread, replay_share)) if value > 0
              for s in rng.sample(group, round(value * len(group)))]
    return [Sample(s.memory_id, s.kind, s.teacher_prompt, s.teacher_prompt, s.prompt_text, s.completion,
                   s.teacher_logprobs, s.teacher_ids, source="reading") for s in chosen]


BUNDLED_ANCHORS = Path(__file__).with_name("anchor_prompts.txt")


def read_anchor_prompts(path: str | Path, count: int, seed: int) -> list[str]:
    """`count` prompts (seeded sample) of the anchor file ('' = the bundled one): one request per line, '#' lines are
    comments, and a literal backslash-n in a line is a line break (so one line can hold a text and a question about
    it: a reading anchor, e.g. lmsleep.bench.world.World.reading_anchors)."""
    if count <= 0:
        return []
    lines = [line.strip() for line in Path(path or BUNDLED_ANCHORS).read_text(encoding="utf-8").splitlines()]
    prompts = [line.replace("\\n", "\n") for line in lines if line and not line.startswith("#")]
    return random.Random(f"anchors-{seed}").sample(prompts, min(count, len(prompts)))


def anchor_samples(tokenizer, prompts: list[str]) -> list[Sample]:
    """General requests unrelated to any memory; student prompt == teacher prompt, the teacher is the model as it
    is: the new expert is trained to leave general behaviour alone (reference perplexity, in-context reading)."""
    out = []
    for prompt in prompts:
        ids = encode(tokenizer, messages(prompt, None))
        out.append(Sample("", "anchor", ids, ids, prompt, [], source="anchor"))
    return out


def replay_samples(tokenizer, replay: list[dict[str, Any]]) -> list[Sample]:
    """Earlier nights' prompts. Without a "memory": student prompt == teacher prompt (the teacher is the model as it
    is). With one (seed.ks_replay_memory_share): the teacher reads that memory again and its y is the answer that
    night's teacher wrote (its end-of-turn token restored), so the student is taught that answer afresh."""
    out = []
    for r in replay:
        memory = r.get("memory")
        chat = question_messages if r.get("kind") == "question" else messages
        student = encode(tokenizer, chat(r["prompt"], None))
        teacher = encode(tokenizer, chat(r["prompt"], memory)) if memory else student
        y = []
        if memory:
            y = list(tokenizer(r["completion"], add_special_tokens=False)["input_ids"])
            y += [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        out.append(Sample(str(r.get("memory_id", "")), r.get("kind", "continuation"), student, teacher, r["prompt"],
                          y, source=f"replay:{r['night']}"))
    return out
