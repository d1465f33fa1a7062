"""The ledger: one record per dream, from the moment it is written to the moment it is (or is not) rehearsed.

    made       the writer produced it (round, kind, the writer's prompt and output, whether a random expert was on)
    scored     its gradient importance for its memory's task measure tau (or a random score: grad_selection off)
    kept       'top-k' or 'random' when selection kept it; `tested` once an isolated LoRA copy trained on it
    rewarded   tau of that copy against tau of the model without it: reward 1 only when tau rose (by > margin)
    taught     ReST-EM trained the dream writer on it (reward-1 dreams, when rest_em is on)
    used       rehearsed: it trained tonight's expert (every reward-1 dream is)

`Dream` carries the token ids the later steps need; `row()` is what models/nights/<night>/dream/ledger.jsonl holds
(texts, never ids), so anyone can audit what was made, scored, kept and used.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)  # identity: two dreams with the same text are still two dreams
class Dream:
    id: str  # "<memory id>/r<round>d<slot>"
    memory_id: str
    round: int
    kind: str  # qa | restatement | implication | continuation
    instruction: str  # what the student is asked WITHOUT the memory (a question, or "Continue: <first words>")
    completion: str  # what it should answer or continue with
    as_question: bool  # asked in the evaluate stage's question format (lmsleep.prompts.question_messages)
    novelty: bool  # a random expert was active while it was written
    # (writer instruction, writer output) pairs: what ReST-EM trains the writer on (the memory goes in front)
    writer_turns: list[tuple[str, str]] = field(default_factory=list)
    malformed: str | None = None  # why it cannot be trained on (e.g. a "question" without a question mark)
    score: float | None = None
    kept: str | None = None  # top-k | random
    tested: bool = False
    tau_before: float | None = None
    tau_after: float | None = None
    reward: int | None = None
    taught_writer: bool = False  # ReST-EM trained the writer on its writer turns
    used: bool = False
    # token ids, filled by the writer (not in the ledger): prompt without the memory and the completion
    student_ids: list[int] = field(default_factory=list, repr=False)
    completion_ids: list[int] = field(default_factory=list, repr=False)
    writer_ids: list[tuple[list[int], list[int]]] = field(default_factory=list, repr=False)

    def row(self) -> dict[str, Any]:
        return {"id": self.id, "memory_id": self.memory_id, "round": self.round, "kind": self.kind,
                "instruction": self.instruction, "completion": self.completion, "novelty": self.novelty,
                "writer_turns": [{"instruction": i, "output": o} for i, o in self.writer_turns],
                "malformed": self.malformed, "score": self.score, "kept": self.kept, "tested": self.tested,
                "tau_before": self.tau_before, "tau_after": self.tau_after, "reward": self.reward,
                "taught_writer": self.taught_writer, "used": self.used}


def ledger_summary(dreams: list[Dream]) -> dict[str, Any]:
    """Counts for the stage summary and the bench: made, malformed, scored, kept, tested, rewarded, used, per kind."""
    rewarded = [d for d in dreams if d.reward == 1]
    return {
        "made": len(dreams),
        "malformed": sum(d.malformed is not None for d in dreams),
        "scored": sum(d.score is not None for d in dreams),
        "kept": sum(d.kept is not None for d in dreams),
        "tested": sum(d.tested for d in dreams),
        "rewarded": len(rewarded),
        "taught_writer": sum(d.taught_writer for d in dreams),
        "used": sum(d.used for d in dreams),
        "made_by_kind": dict(Counter(d.kind for d in dreams)),
        "rewarded_by_kind": dict(Counter(d.kind for d in rewarded)),
    }


def training_audit(dreams: list[Dream]) -> list[dict[str, Any]]:
    """The texts the isolated copies and the writer trained on (rehearsal adds its KS samples, lmsleep.dream.rehearse):
    the audit the probe-leak test reads. Writer turns are trained with the memory text in front of the instruction."""
    rows = []
    for d in dreams:
        if d.tested:
            rows.append({"use": "trial", "dream": d.id, "prompt": d.instruction, "completion": d.completion})
        if d.taught_writer:
            rows += [{"use": "writer", "dream": d.id, "prompt": i, "completion": o} for i, o in d.writer_turns]
    return rows
