"""The bAbI benchmark's own model: a tiny Llama trained here on bAbI train stories so that it can read a window and
answer (lmsleep.bench.babi streams longer stories through it). Cached under models/bench/babi-<hash of the settings
and the train files>, trained on first use.

Training is cross-entropy on the answer token of (window of story, question) examples, with entity names renamed at
random within their class each time, so the model learns to read the context rather than memorise the train
stories' people and places.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lmsleep.bench.babi_data import (BOS, PAD, SPECIALS, UNK, Question, Vocab, cloze_of, entities, read_questions,
                                     sentence_ids, task_file, words)
from lmsleep.memory import write_json


@dataclass
class ModelSettings:
    tasks: tuple = ("qa1", "qa2")
    window_tokens: int = 48
    hidden: int = 64
    layers: int = 4
    heads: int = 4
    train_steps: int = 1500
    batch: int = 32
    lr: float = 3e-3
    train_seed: int = 0
    rename: bool = True  # rename entities at random per example (people, places, objects; consistent in a story)

    def max_positions(self) -> int:
        return self.window_tokens + 12  # <bos> + window + "| the football is in the" + answer, with room


def train_examples(questions: list[Question], vocab: Vocab, window_tokens: int):
    """(context ids, query ids, answer id) per train question and query form; the context is the question's head, its
    story from the earliest supporting fact on, as in a long test story (dropped where it does not fit a window)."""
    out = []
    for q in questions:
        context = [t for s in q.facts[min(q.supports):] for t in sentence_ids(vocab, s)]
        if len(context) > window_tokens:
            continue
        answer = vocab.index.get(q.answer.lower(), UNK)
        for query in (["|", *words(q.question)], ["|", *cloze_of(q.question)]):
            out.append((context, vocab.encode(query), answer))
    return out


def entity_classes(questions: list[Question], vocab: Vocab) -> list[list[int]]:
    """Token ids of the people, places and objects of the train stories (the words a renaming may permute)."""
    people, places, objects = set(), set(), set()
    for q in questions:
        for sentence in q.facts:
            ws = words(sentence)
            people.add(ws[0])
            places |= {ws[i + 2] for i in range(len(ws) - 2) if ws[i : i + 2] == ["to", "the"]}
            objects |= entities(sentence) - {ws[0]}
        places.add(q.answer.lower())
    objects -= places | people
    return [vocab.encode(sorted(c)) for c in (people, places - people, objects) if len(c) > 1]


def renamed(example: tuple, classes: list[list[int]], rng: random.Random) -> tuple:
    """One example with every person, place and object renamed by a random bijection within its class, so the model
    must read the context (it cannot remember 1,000 stories); the story's meaning and answer are unchanged."""
    mapping: dict[int, int] = {}
    for ids in classes:
        mapping.update(zip(ids, rng.sample(ids, len(ids))))
    context, query, answer = example
    return ([mapping.get(t, t) for t in context], [mapping.get(t, t) for t in query], mapping.get(answer, answer))


def answer_logits(model, rows: list[list[int]]) -> torch.Tensor:
    """Next-token logits after each row (right-padded batch): [rows, vocab]."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], attn[i, : len(r)] = torch.tensor(r), 1
    logits = model(input_ids=ids, attention_mask=attn).logits
    return logits[torch.arange(len(rows)), torch.tensor([len(r) - 1 for r in rows])]


def train_base(settings: ModelSettings, train: list[Question], dest: Path) -> dict[str, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    rng = random.Random(settings.train_seed)
    torch.manual_seed(settings.train_seed)
    vocab = Vocab(sorted({w for q in train for s in q.facts + [q.question, q.answer] for w in words(s)}
                         | set(words("is in the"))))
    examples = train_examples(train, vocab, settings.window_tokens)
    classes = entity_classes(train, vocab) if settings.rename else []
    cfg = LlamaConfig(vocab_size=len(vocab.tokens), hidden_size=settings.hidden, intermediate_size=4 * settings.hidden,
                      num_hidden_layers=settings.layers, num_attention_heads=settings.heads,
                      num_key_value_heads=settings.heads, max_position_embeddings=settings.max_positions(),
                      bos_token_id=BOS, eos_token_id=PAD, pad_token_id=PAD, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 100) * max(0.05, 1 - s / settings.train_steps))
    started, losses, correct = time.perf_counter(), [], []
    model.train()
    for step in range(settings.train_steps):
        batch = [renamed(examples[rng.randrange(len(examples))], classes, rng) for _ in range(settings.batch)]
        logits = answer_logits(model, [[BOS, *c, *q] for c, q, _ in batch])
        target = torch.tensor([a for _, _, a in batch])
        loss = torch.nn.functional.cross_entropy(logits, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        correct.append(float((logits.argmax(-1) == target).float().mean()))
        if step % 500 == 0 or step == settings.train_steps - 1:
            print(f"bench babi: base training step {step}, loss {losses[-1]:.3f}, "
                  f"batch accuracy (last 100 steps) {sum(correct[-100:]) / len(correct[-100:]):.2f}")
    model.eval()
    info = {"settings": asdict(settings), "examples": len(examples), "questions": len(train),
            "renamed_classes": [vocab.decode(c).split() for c in classes],
            "seconds": round(time.perf_counter() - started, 1), "loss_first": losses[0], "loss_last": losses[-1],
            "train_batch_accuracy_last100": sum(correct[-100:]) / len(correct[-100:]),
            "parameters": sum(p.numel() for p in model.parameters())}
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    (tmp / "vocab.json").write_text(json.dumps(vocab.tokens))
    write_json(tmp / "training.json", info)
    tmp.rename(dest)
    return info


def ensure_base(root: Path, settings: ModelSettings, data: Path) -> Path:
    """The cached tiny model for these settings and train files, trained here on first use."""
    files = [task_file(data, t, "train") for t in settings.tasks]
    digest = hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode())
    for f in files:
        digest.update(f.read_bytes())
    dest = root / "models" / "bench" / f"babi-{digest.hexdigest()[:12]}"
    if not (dest / "vocab.json").exists():
        train = [q for t, f in zip(settings.tasks, files) for q in read_questions(f, t)]
        print(f"bench babi: training the base model on {len(train)} train questions of {list(settings.tasks)} "
              f"-> {dest}")
        train_base(settings, train, dest)
    return dest


def load_base(path: Path):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(path)
    model.eval()
    return model, Vocab(json.loads((path / "vocab.json").read_text())[len(SPECIALS):])
