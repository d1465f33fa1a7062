"""The task measure tau of a memory (PAPER §5): built from the memory text and the model alone, never from probes.

    tasks = build_tasks(dm, memories, cfg, rng)      # {memory id: [TaskItem]}
    tau = tau_value(dm, tasks[memory_id], cfg)       # higher is better; under whatever adapter is live
    loss = tau_loss(dm, tasks[memory_id])            # differentiable: what selection takes gradients of

Items of a memory:
  question  the model (as it is: no writer, no random expert) writes `tau_questions` questions about the memory's
            sentences WITH the memory in context, answers each greedily (the reference) and `tau_answers` times by
            sampling; a question is kept when at least `tau_min_agreement` of the samples agree with the greedy answer
            (lmsleep.grading.grade): an answer the model gives consistently from the memory is one it can verify.
  recall    only for a memory none of whose questions survived: "Continue: <first half of a sentence>" -> the rest of
            that sentence, taken verbatim from the memory (so tau always exists; recorded in the stage log).
tau is measured WITHOUT the memory in context (what consolidation is for): `tau_metric` 'loss' = minus the mean NLL
of the reference answers (continuous, one forward pass); 'accuracy' = greedy answers graded against them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from lmsleep.dream.model import completion_nll
from lmsleep.generation import generate_answers
from lmsleep.grading import grade
from lmsleep.ks.rollout import sample_completions
from lmsleep.ks.samples import clean_question, encode, messages, question_instruction, sentences
from lmsleep.memory import training_text
from lmsleep.prompts import question_messages

AGREEMENT_F1 = 0.5  # two answers agree when one contains the other or their token F1 reaches this
ANSWER_TOKENS = 24  # longest reference answer
QUESTION_TOKENS = 32


@dataclass
class TaskItem:
    memory_id: str
    kind: str  # question | recall
    prompt: str  # the question (or recall instruction), asked WITHOUT the memory
    answer: str  # the reference, written by the model with the memory in context (recall: the memory's own words)
    prompt_ids: list[int]
    answer_ids: list[int]
    agreement: float | None = None

    def row(self) -> dict[str, Any]:
        return {"memory_id": self.memory_id, "kind": self.kind, "prompt": self.prompt, "answer": self.answer,
                "agreement": self.agreement}


def _recall_item(tokenizer, memory_id: str, text: str, rng: random.Random) -> TaskItem:
    words = rng.choice(sentences(text)).split()
    cut = max(1, len(words) // 2)
    instruction, rest = "Continue: " + " ".join(words[:cut]), " ".join(words[cut:]) or words[-1]
    return TaskItem(memory_id, "recall", instruction, rest, encode(tokenizer, messages(instruction, None)),
                    list(tokenizer(rest, add_special_tokens=False)["input_ids"])[:ANSWER_TOKENS])


def build_tasks(dm, memories: list[dict[str, Any]], cfg, rng: random.Random) -> dict[str, list[TaskItem]]:
    """tau's items per memory, written by the model as it is (no writer, no random expert), memory in context."""
    tok = dm.tokenizer
    asks = []  # (memory id, text, sentence)
    for m in memories:
        text = training_text(m)
        spread = sentences(text)
        offset = rng.randrange(len(spread))
        asks += [(str(m["id"]), text, spread[(offset + j) % len(spread)]) for j in range(cfg.tau_questions)]
    tasks: dict[str, list[TaskItem]] = {str(m["id"]): [] for m in memories}
    with dm.use(None), torch.no_grad():
        written = sample_completions(dm.cms, tok, [encode(tok, messages(question_instruction(s), text))
                                                   for _, text, s in asks], cfg.temperature, QUESTION_TOKENS,
                                     groups=[mid for mid, _, _ in asks])
        questions = [(mid, text, clean_question(tok.decode(ids, skip_special_tokens=True)))
                     for (mid, text, _), ids in zip(asks, written)]
        questions = [(mid, text, q) for mid, text, q in questions if q]
        in_context = [question_messages(q, text) for _, text, q in questions]
        greedy = generate_answers(dm.cms.base, tok, in_context, ANSWER_TOKENS, 16, desc="dream/tau answers",
                                  groups=[mid for mid, _, _ in questions]) if questions else []
        sampled = sample_completions(dm.cms, tok, [encode(tok, chat) for chat in in_context], cfg.temperature,
                                     ANSWER_TOKENS, n=cfg.tau_answers, groups=[mid for mid, _, _ in questions]
                                     ) if questions and cfg.tau_answers else []
    for i, ((mid, _, q), reference) in enumerate(zip(questions, greedy)):
        if not reference.strip():
            continue
        samples = [tok.decode(ids, skip_special_tokens=True) for ids in sampled[i * cfg.tau_answers:
                                                                                (i + 1) * cfg.tau_answers]]
        agreement = (sum(grade(s, reference, AGREEMENT_F1)["correct"] for s in samples) / len(samples)
                     if samples else 1.0)
        if agreement >= cfg.tau_min_agreement:
            tasks[mid].append(TaskItem(mid, "question", q, reference, encode(tok, question_messages(q)),
                                       list(tok(reference, add_special_tokens=False)["input_ids"])[:ANSWER_TOKENS],
                                       agreement))
    for m in memories:
        if not tasks[str(m["id"])]:
            tasks[str(m["id"])].append(_recall_item(tok, str(m["id"]), training_text(m), rng))
    return tasks


def tau_loss(dm, items: list[TaskItem]) -> torch.Tensor:
    """Mean NLL of the items' reference answers without the memory (differentiable; the live adapter acts)."""
    return completion_nll(dm.cms, [(it.prompt_ids, it.answer_ids) for it in items], dm.pad_id()).mean()


def tau_value(dm, items: list[TaskItem], cfg) -> float:
    """tau under the live adapter, higher is better: -loss, or the fraction of greedy no-context answers graded
    correct against the references."""
    if cfg.tau_metric == "accuracy":
        answers = generate_answers(dm.cms.base, dm.tokenizer, [messages(it.prompt, None) if it.kind == "recall"
                                                               else question_messages(it.prompt) for it in items],
                                   ANSWER_TOKENS, 16, desc="dream/tau")
        return sum(grade(a, it.answer, AGREEMENT_F1)["correct"] for a, it in zip(answers, items)) / len(items)
    with torch.no_grad():
        return -float(tau_loss(dm, items))
