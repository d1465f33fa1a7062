"""Writing dreams (PAPER §5 step 1): m per memory, sampled from the writer with the memory C in context, while every
CMS level also runs one random expert (novelty).

    dreams = write_dreams(dm, memories, cfg, round_no=0, rng=rng)

A memory's m dream slots cycle through `cfg.kinds` (starting at a random kind) and through its sentences:
  qa            "Sentence: <s> ... Write a short question ..." -> q, then q is answered in context -> a
                (two writer turns); the student is asked q in the evaluate stage's format and should answer a
  restatement   "Restate the text above in your own words ..." -> t
  implication   "Write one new sentence that follows from the text above ..." -> t
                (restatements and implications are trained as continuations: "Continue: <first words of t>" -> rest)
  continuation  "Continue: <first words of sentence s>" -> the writer's continuation
Slot j of every memory is written in one batch under its own random expert (drawn from a generator seeded by the
round and the slot), so the m dreams of a memory come from m different perturbations of the model. The random
expert exists only inside `dm.novelty(...)`: before and after, the active experts are exactly tonight's.
A dream that cannot be trained on (no question mark, too short, empty) is recorded as malformed, never dropped
silently. Probes are never read here: the memory reaches the writer through `training_text` alone.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from lmsleep.dream.ledger import Dream
from lmsleep.generation import stop_token_ids
from lmsleep.ks.rollout import sample_completions
from lmsleep.ks.samples import clean_question, encode, messages, question_instruction, sentences
from lmsleep.memory import training_text
from lmsleep.prompts import question_messages

INSTRUCTIONS = {
    "restatement": "Restate the text above in your own words, in one or two sentences.",
    "implication": "Write one new sentence that follows from the text above: a consequence or an implication.",
}
MIN_WORDS = 4  # a restatement or implication shorter than this teaches nothing


def _split_for_continuation(text: str, rng: random.Random) -> tuple[str, str] | None:
    """("Continue: <first words>", rest) of a written text; None when it is too short to split."""
    words = text.split()
    if len(words) < MIN_WORDS:
        return None
    cut = rng.randint(2, max(2, min(8, len(words) // 3)))
    return "Continue: " + " ".join(words[:cut]), " ".join(words[cut:])


def _plan(memories: list[dict[str, Any]], cfg, rng: random.Random) -> list[list[dict[str, Any]]]:
    """plan[j][i]: what slot j of memory i asks the writer (kind, writer instruction, student instruction)."""
    plan = [[] for _ in range(cfg.dreams_per_memory)]
    for m in memories:
        text, spread = training_text(m), sentences(training_text(m))
        kind_at, sentence_at = rng.randrange(len(cfg.kinds)), rng.randrange(len(spread))
        for j in range(cfg.dreams_per_memory):
            kind, sentence = cfg.kinds[(kind_at + j) % len(cfg.kinds)], spread[(sentence_at + j) % len(spread)]
            step = {"memory_id": str(m["id"]), "text": text, "kind": kind, "student": None}
            if kind == "qa":
                step["writer"] = question_instruction(sentence)
            elif kind == "continuation":
                words = sentence.split()
                step["writer"] = step["student"] = "Continue: " + " ".join(
                    words[: rng.randint(min(3, len(words)), max(3, len(words) // 2))])
            else:
                step["writer"] = INSTRUCTIONS[kind]
            plan[j].append(step)
    return plan


def write_dreams(dm, memories: list[dict[str, Any]], cfg, round_no: int, rng: random.Random) -> list[Dream]:
    """m dreams per memory from the writer (memory in context), each slot under its own random expert."""
    tok = dm.tokenizer
    stops = stop_token_ids(dm.cms.base, tok)
    device = next(dm.cms.base.parameters()).device  # the random expert is drawn where its tensors live
    dreams: list[Dream] = []
    for j, slot in enumerate(_plan(memories, cfg, rng)):
        generator = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + round_no * 1_009 + j)
        with dm.use("writer"), dm.novelty(cfg.random_expert, cfg.novelty_std, generator), torch.no_grad():
            writer_ids = [encode(tok, messages(step["writer"], step["text"])) for step in slot]
            outputs = sample_completions(dm.cms, tok, writer_ids, cfg.temperature, cfg.max_new_tokens)
            for step, prompt, out in zip(slot, writer_ids, outputs):
                step["turns"] = [(step["writer"], prompt, out)]  # (instruction for the ledger, prompt ids, output)
                step["output"] = tok.decode(out, skip_special_tokens=True).strip()
            qa = [s for s in slot if s["kind"] == "qa" and clean_question(s["output"])]
            questions = [clean_question(s["output"]) for s in qa]
            answer_ids = [encode(tok, question_messages(q, s["text"])) for q, s in zip(questions, qa)]
            answers = sample_completions(dm.cms, tok, answer_ids, cfg.temperature, cfg.max_new_tokens)
            for step, q, prompt, out in zip(qa, questions, answer_ids, answers):
                step["turns"].append((f"answer with the text in context: {q}", prompt, out))
        dreams += [_dream(tok, step, f"{step['memory_id']}/r{round_no}d{j}", round_no, cfg, rng, stops)
                   for step in slot]
    return dreams


def _dream(tok, step: dict[str, Any], dream_id: str, round_no: int, cfg, rng: random.Random, stops) -> Dream:
    """The Dream of one planned slot: what the student is asked (no memory) and the completion it should give."""
    kind, output, last = step["kind"], step["output"], step["turns"][-1][2]
    # the ledger keeps each writer instruction, not the memory text shown with it (that is in accepted.jsonl)
    turns = [(label, tok.decode(out, skip_special_tokens=True).strip()) for label, _, out in step["turns"]]
    dream = Dream(dream_id, step["memory_id"], round_no, kind, "", "", kind == "qa", cfg.random_expert, turns,
                  writer_ids=[(list(prompt), list(out)) for _, prompt, out in step["turns"]])
    end = [last[-1]] if last and last[-1] in stops else []  # the writer's stop token: the student learns to stop
    if kind == "qa":
        question = clean_question(output)
        answer = turns[-1][1] if question and len(turns) == 2 else ""
        if not question:
            dream.malformed = "no question (a line with '?' and at least three words)"
        elif not answer:
            dream.malformed = "empty answer"
        else:
            dream.instruction, dream.completion = question, answer
            dream.student_ids = encode(tok, question_messages(question))
            dream.completion_ids = list(last)
        return dream
    if kind == "continuation":
        split = (step["student"], output) if output else None
    else:
        split = _split_for_continuation(output, rng)
    if split is None:
        dream.malformed = f"{kind} too short to train on"
        return dream
    dream.instruction, dream.completion = split
    dream.student_ids = encode(tok, messages(dream.instruction, None))
    dream.completion_ids = (list(last) if kind == "continuation"
                            else list(tok(dream.completion, add_special_tokens=False)["input_ids"]) + end)
    return dream
