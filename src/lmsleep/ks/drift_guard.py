"""The drift guard: after a KS night, shrink the new expert until a general text's perplexity rises by at most a budget.

    guard = keep_within_drift(cms, tokenizer, read_drift_text(""), budget=0.08)   # seed.ks_drift_budget
    guard["scale"]     # what every active expert's B was multiplied by (1.0: the night was already inside)

Why: the promotion gate refuses a night whose reference perplexity rose past promote.max_perplexity_increase, and a
refused night keeps nothing it learned. Scaling the expert's output down (B x s) lowers the perplexity rise much
faster than recall: on the demo night at ks_lr 3e-3, s = 0.7 kept 9 and 7 of 24 probes (10 and 8 at s = 1) while
the reference perplexity rise fell from +3.7% / +10.2% to -0.6% / +1.1% (docs/results.md). The expert stays a plain
linear delta (B A alpha/r), so the adapter export and the merged checkpoint remain exact.

The guard reads its own bundled text (src/lmsleep/ks/drift_text.txt), never the evaluate stage's reference text: a
night tuned on the gate's own measure would make the gate meaningless (the seed stage refuses that file).

The reading check (seed.ks_reading_budget, off by default): a night can also erode in-context reading, which no
perplexity on plain text sees, and tomorrow's teacher is the model reading tomorrow's memory (on the 30-night stream
ks_lr 3e-3 read the next night's memory right 63% of the time against 77%). With it on, s must also keep within its
own budget the perplexity of the answer span of the model's own answers, from before the night, to held-out reading
items it reads right (a short text, a question about it, its answer; never a probe, never trained on); the bundled
items are src/lmsleep/ks/reading_guard.jsonl.

Search: the rise r(s) = ppl(s) / ppl(0) - 1 grows with s near 0 (the expert is a small perturbation there), so the
largest s in [0, 1] with r(s) <= budget is found by bisection; every s returned was measured inside the budget.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from lmsleep.generation import perplexity
from lmsleep.prompts import question_messages

BUNDLED_DRIFT_TEXT = Path(__file__).with_name("drift_text.txt")
BUNDLED_READING = Path(__file__).with_name("reading_guard.jsonl")  # seed.ks_reading_file
DRIFT_TOKENS = 2048  # the bundled text is ~1,500 SmolLM2 tokens: all of it (the reference check reads up to 1,024)
READING_ANSWER_TOKENS = 24  # the evaluate stage's answer cap on the demo night: a brief answer fits
Target = tuple[list[int], list[int], int, int]  # prompt ids, the model's answer ids, the answer span [start, end)


def read_drift_text(path: str | Path) -> str:
    """The guard's general text ('' = the bundled one); '#' lines are comments (the bundled file's header)."""
    text = Path(path or BUNDLED_DRIFT_TEXT).read_text(encoding="utf-8")
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#")).strip()
    if not body:
        raise ValueError(f"seed.ks_drift_text {path or BUNDLED_DRIFT_TEXT}: no text to measure perplexity on")
    return body


def _active(cms) -> list[tuple[str, list[int]]]:
    return [(name, list(level.active)) for name, level in cms.levels.items() if level.active]


def _without_experts(cms) -> ExitStack:
    """A context in which every active expert is masked: the model as it was before the night."""
    stack = ExitStack()
    for name, indices in _active(cms):
        stack.enter_context(cms.experts_off(name, indices))
    return stack


@torch.no_grad()
def _scale_b(cms, factor: float, originals: dict[int, torch.Tensor]) -> None:
    """Set every active expert's B to factor x its trained value (kept in `originals`, by tensor id)."""
    for name, indices in _active(cms):
        for pool in cms.levels[name].pools.values():
            for i in indices:
                b = pool.B[i]
                original = originals.setdefault(id(b), b.detach().clone())
                b.copy_(original * factor)


def read_reading_items(path: str | Path) -> list[dict[str, str]]:
    """The reading check's items ('' = the bundled src/lmsleep/ks/reading_guard.jsonl): one JSON object per line with
    "text", "question" and "answer", each a non-empty string; blank lines are skipped. A bad line is an error naming
    the line, never skipped."""
    source = Path(path or BUNDLED_READING)
    items = []
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"seed.ks_reading_file {source}:{number}: not JSON ({err.msg})") from None
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) and item[k].strip()
                                                 for k in ("text", "question", "answer")):
            raise ValueError(f"seed.ks_reading_file {source}:{number}: needs non-empty strings "
                             "\"text\", \"question\" and \"answer\"")
        items.append({k: item[k] for k in ("text", "question", "answer")})
    if not items:
        raise ValueError(f"seed.ks_reading_file {source}: no reading items")
    return items


def answer_span(tokenizer, answer_ids: list[int], answer: str) -> tuple[int, int] | None:
    """The shortest run of `answer_ids` whose text contains `answer` (lmsleep.grading.contains: normalised, whole
    words), as [start, end) token positions; None when the answer is not in them at all."""
    from lmsleep.grading import contains

    def says(start: int, end: int) -> bool:
        return contains(tokenizer.decode(answer_ids[start:end], skip_special_tokens=True), answer)

    end = next((k for k in range(1, len(answer_ids) + 1) if says(0, k)), None)
    if end is None:
        return None
    start = max(j for j in range(end) if says(j, end))
    return start, end


@torch.no_grad()
def reading_targets(model, tokenizer, items: list[dict[str, str]],
                    max_new_tokens: int = READING_ANSWER_TOKENS) -> list[Target]:
    """For each item the model reads RIGHT, its own greedy answer with the item's text in context (the evaluate
    stage's prompt format: lmsleep.prompts.question_messages, the chat template's generation prompt) and the span of
    it that says the item's answer (answer_span). Run on the model as it was before the night.

    Why its own words and only the span: the night's expert is trained on answers in the model's own words, and it
    may change how an answer starts ("The bakery is run by ...") without changing what the text says. Scored on the
    file's answer, the demo night's first seed read +82% (10.4 -> 19.0) for a night whose in-context accuracy fell 4
    points; scored on the whole own answer, +20% (docs/results.md, "The reading check")."""
    from lmsleep.generation import stop_token_ids

    device = next(model.parameters()).device
    stops = stop_token_ids(model, tokenizer)
    targets = []
    for item in items:
        prompt = tokenizer.apply_chat_template(question_messages(item["question"], item["text"]), tokenize=False,
                                               add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids], device=device)
        output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                do_sample=False, num_beams=1, eos_token_id=stops,
                                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0])
        answer_ids = output[0, len(prompt_ids):].tolist()
        span = answer_span(tokenizer, answer_ids, item["answer"].strip())
        if span is not None:
            targets.append((prompt_ids, answer_ids, *span))
    return targets  # empty when it reads none right: keep_within_drift then skips the check and says so


@torch.no_grad()
def reading_perplexity(model, targets: list[Target]) -> float:
    """exp(mean loss of the answer-span tokens) of reading_targets' items, the model's own answer teacher-forced: how
    surely the model still says, from a text it is given, what it said before the night. One item at a time (no
    padding to get wrong)."""
    device = next(model.parameters()).device
    total, counted = 0.0, 0
    for prompt_ids, answer_ids, start, end in targets:
        ids = torch.tensor([prompt_ids + answer_ids], device=device)
        labels = torch.full_like(ids, -100)
        first = len(prompt_ids) + start
        labels[0, first : len(prompt_ids) + end] = ids[0, first : len(prompt_ids) + end]  # only the span is scored
        total += float(model(input_ids=ids, labels=labels).loss) * (end - start)
        counted += end - start
    return math.exp(total / counted)


def keep_within_drift(cms, tokenizer, text: str | None, budget: float, max_tokens: int = DRIFT_TOKENS,
                      bisections: int = 6, reading: list[dict[str, str]] | None = None,
                      reading_budget: float = 0.0) -> dict[str, Any]:
    """Scale the active experts of `cms` so that `text`'s perplexity rises by at most `budget` (a fraction) over the
    same model without them and, with `reading` and reading_budget > 0, the perplexity of the answers the model gave
    before to the reading items it read right (reading_targets, reading_perplexity) by at most reading_budget; a
    budget of 0 turns its check off (at least one must be on). A model that reads none of the items right has no
    reading to keep: the reading check is skipped, and the result says so (reading_skipped).
    Returns what was measured: each check's value before, at full strength and as left, the scale, and how many
    measuring passes it took (each one over the text's max_tokens and/or the reading items)."""
    checks: dict[str, tuple[Callable[[], float], float]] = {}
    if budget > 0:
        if not text:
            raise ValueError("the drift guard needs a text to measure perplexity on")
        checks["perplexity"] = (lambda: perplexity(cms.base, tokenizer, text, max_tokens), budget)
    elif budget < 0:
        raise ValueError(f"the drift budget must be >= 0, got {budget}")
    if reading_budget > 0:
        if not reading:
            raise ValueError("the reading check needs reading items (seed.ks_reading_file)")
        targets: list[Target] = []  # the model's own right answers, before the night
        checks["reading"] = (lambda: reading_perplexity(cms.base, targets), reading_budget)
    elif reading_budget < 0:
        raise ValueError(f"the reading budget must be >= 0, got {reading_budget}")
    if not checks:
        raise ValueError("the drift guard needs a budget > 0: seed.ks_drift_budget or seed.ks_reading_budget")
    if not _active(cms):
        raise ValueError("the drift guard needs the night's expert active: no CMS level has an active expert")
    started = time.perf_counter()
    out: dict[str, Any] = {"budget": budget, "scale": 1.0}
    if "reading" in checks:
        with _without_experts(cms):
            targets += reading_targets(cms.base, tokenizer, reading or [])
        out |= {"reading_budget": reading_budget, "reading_items": len(reading or []),
                "reading_read_right": len(targets)}
        if not targets:  # a model that reads none of them right has no reading for the check to keep
            del checks["reading"]
            out["reading_skipped"] = f"the model reads none of the {len(reading or [])} reading items right"
    if not checks:
        return out | {"perplexity_passes": 0, "tokens": 0, "seconds": round(time.perf_counter() - started, 1)}

    def measure() -> dict[str, float]:
        return {name: fn() for name, (fn, _) in checks.items()}

    def inside(measured: dict[str, float]) -> bool:
        return all(measured[name] / before[name] - 1.0 <= limit for name, (_, limit) in checks.items())

    with _without_experts(cms):
        before = measure()
    full = measure()
    passes, scale, left = 2, 1.0, full
    if not inside(full):
        originals: dict[int, torch.Tensor] = {}
        low, low_measured, high = 0.0, before, 1.0
        for _ in range(bisections):
            mid = (low + high) / 2
            _scale_b(cms, mid, originals)
            measured = measure()
            passes += 1
            if inside(measured):
                low, low_measured = mid, measured
            else:
                high = mid
        _scale_b(cms, low, originals)
        scale, left = low, low_measured
    out["scale"] = scale
    for name, prefix in (("perplexity", ""), ("reading", "reading_")):
        if name in checks:
            out |= {f"{prefix}{key}": round(value, 4) for key, value in (
                ("perplexity_before", before[name]), ("perplexity_full", full[name]),
                ("perplexity_left", left[name]), ("rise_full", full[name] / before[name] - 1.0),
                ("rise_left", left[name] / before[name] - 1.0))}
    return out | {"perplexity_passes": passes, "tokens": max_tokens if budget > 0 else 0,
                  "seconds": round(time.perf_counter() - started, 1)}


def describe_guard(guard: dict[str, Any]) -> str:
    """One log line for what keep_within_drift measured and did."""
    parts = [f"{what} {guard[p + 'perplexity_before']:.2f} -> {guard[p + 'perplexity_full']:.2f} "
             f"({guard[p + 'rise_full']:+.1%}, budget {guard[limit]:+.1%}), left {guard[p + 'rise_left']:+.1%}"
             for what, p, limit in (("general-text perplexity", "", "budget"),
                                    ("reading perplexity", "reading_", "reading_budget")) if p + "rise_full" in guard]
    if "reading_skipped" in guard:
        parts.append(f"reading check skipped ({guard['reading_skipped']})")
    return f"seed/ks drift guard: expert scaled by {guard['scale']:.3f}: " + "; ".join(parts)


def guard_night(cms, tokenizer, cfg, drift_text: str | None = None,
                reading: list[dict[str, str]] | None = None) -> dict[str, Any] | None:
    """The guard as a seed config sets it (ks_drift_budget on `drift_text`, None = read cfg.ks_drift_text; and
    ks_reading_budget on `reading`, None = read cfg.ks_reading_file), logged; None when both budgets are 0. Run after
    every step that trains tonight's expert: the seed night, and dream rehearsal, which trains it again."""
    if cfg.ks_drift_budget <= 0 and cfg.ks_reading_budget <= 0:
        return None
    if cfg.ks_drift_budget > 0 and drift_text is None:
        drift_text = read_drift_text(cfg.ks_drift_text)
    if cfg.ks_reading_budget > 0 and reading is None:
        reading = read_reading_items(cfg.ks_reading_file)
    guard = keep_within_drift(cms, tokenizer, drift_text if cfg.ks_drift_budget > 0 else None, cfg.ks_drift_budget,
                              reading=reading, reading_budget=cfg.ks_reading_budget)
    print(describe_guard(guard))
    return guard
