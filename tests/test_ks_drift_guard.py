"""The drift guard (lmsleep.ks.drift_guard): the night's expert is scaled into a perplexity budget on a general text
that is never the evaluate stage's reference; A, the base and a night already inside stay bit-identical."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from tinyworld import CANARY_A, CANARY_Q, gold_reading_targets, memory, tiny_workspace

from lmsleep.ks import drift_guard

from lmsleep.cms import CMSConfig, LevelSpec, wrap_model
from lmsleep.config import load_params
from lmsleep.generation import perplexity
from lmsleep.ks.drift_guard import (DRIFT_TOKENS, answer_span, keep_within_drift, read_drift_text, read_reading_items,
                                   reading_perplexity, reading_targets)
from lmsleep.ks.samples import BUNDLED_ANCHORS
from lmsleep.memory import write_jsonl
from lmsleep.models import load_base
from lmsleep.stages import seed

REPO_REFERENCE = "data/reference.txt"


@pytest.fixture
def tiny(tmp_path, tmp_path_factory):
    params, ws = tiny_workspace(tmp_path, tmp_path_factory.getbasetemp() / "tiny-cache-guard")
    return params, ws


def expert_model(ws, std: float):
    """The tiny base with one active expert whose B is random (a stand-in for a night that drifted)."""
    model, tokenizer = load_base(ws.base_model("tiny"))
    cms = wrap_model(model, CMSConfig(levels=[LevelSpec(name="night", pool_size=1, rank=4, alpha=8.0)]))
    index = cms.activate_expert("night", torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for pool in cms.level("night").pools.values():
            pool.B[index].copy_(torch.randn(pool.B[index].shape, generator=g) * std)
    return cms, tokenizer, index


def snapshot(cms, index):
    pools = cms.level("night").pools
    return ({k: p.A[index].detach().clone() for k, p in pools.items()},
            {k: p.B[index].detach().clone() for k, p in pools.items()},
            {k: v.detach().clone() for k, v in cms.base.state_dict().items() if "lora" not in k})


@torch.no_grad()
def set_b(cms, index, b_trained, scale):
    """Every projection's B of expert `index` set to `scale` x its trained value."""
    for key, pool in cms.level("night").pools.items():
        pool.B[index].copy_(b_trained[key] * scale)


def rise(cms, tokenizer, text, index):
    with cms.experts_off("night", [index]):
        before = perplexity(cms.base, tokenizer, text, DRIFT_TOKENS)
    return perplexity(cms.base, tokenizer, text, DRIFT_TOKENS) / before - 1.0


def test_a_drifting_expert_is_scaled_to_the_largest_measured_scale_inside_the_budget(tiny):
    _, ws = tiny
    cms, tokenizer, index = expert_model(ws, std=2.0)
    text = read_drift_text("")
    full = rise(cms, tokenizer, text, index)
    assert full > 1e-3  # the random expert drifts (a tiny random model's perplexity moves little: the budget follows)
    budget = full / 4
    a_before, b_before, base_before = snapshot(cms, index)

    guard = keep_within_drift(cms, tokenizer, text, budget, bisections=6)

    scale = guard["scale"]
    assert 0.0 < scale < 1.0 and guard["rise_full"] == pytest.approx(full, abs=1e-4)
    pools = cms.level("night").pools
    for key, pool in pools.items():
        assert torch.equal(pool.A[index], a_before[key])  # only B is scaled: the expert stays B A alpha/r
        assert torch.equal(pool.B[index], b_before[key] * scale)
    after = {k: v for k, v in cms.base.state_dict().items() if k in base_before}
    assert all(torch.equal(base_before[k], v) for k, v in after.items())
    left = rise(cms, tokenizer, text, index)
    assert left <= budget and left == pytest.approx(guard["rise_left"], abs=1e-4)
    # the largest such scale at the bisection's resolution: one step (1/64) more is past the budget
    set_b(cms, index, b_before, scale + 1 / 64)
    assert rise(cms, tokenizer, text, index) > budget
    assert guard["perplexity_passes"] == 2 + 6


def test_an_expert_inside_the_budget_is_left_bit_identical(tiny):
    _, ws = tiny
    cms, tokenizer, index = expert_model(ws, std=0.01)
    text = read_drift_text("")
    budget = max(rise(cms, tokenizer, text, index), 0.0) + 0.01
    _, b_before, _ = snapshot(cms, index)
    guard = keep_within_drift(cms, tokenizer, text, budget)
    assert guard["scale"] == 1.0 and guard["perplexity_passes"] == 2
    assert all(torch.equal(p.B[index], b_before[k]) for k, p in cms.level("night").pools.items())


def test_the_guard_refuses_a_budget_of_zero_and_a_model_without_an_active_expert(tiny):
    _, ws = tiny
    cms, tokenizer, index = expert_model(ws, std=0.1)
    with pytest.raises(ValueError, match="needs a budget > 0"):
        keep_within_drift(cms, tokenizer, "some general text here", 0.0)
    with pytest.raises(ValueError, match="drift budget must be >= 0"):
        keep_within_drift(cms, tokenizer, "some general text here", -0.1)
    with pytest.raises(ValueError, match="needs reading items"):
        keep_within_drift(cms, tokenizer, None, 0.0, reading=[], reading_budget=0.05)
    cms.reset_expert("night", index)
    with pytest.raises(ValueError, match="no CMS level has an active expert"):
        keep_within_drift(cms, tokenizer, "some general text here", 0.05)


def reading_rise(cms, tokenizer, items, index):
    with cms.experts_off("night", [index]):
        targets = gold_reading_targets(cms.base, tokenizer, items)
        before = reading_perplexity(cms.base, targets)
    return reading_perplexity(cms.base, targets) / before - 1.0


@pytest.fixture
def gold_reading(monkeypatch):
    """The tiny model reads no text right: the guard scores the items' file answers as if it had said them."""
    monkeypatch.setattr(drift_guard, "reading_targets", gold_reading_targets)


def test_the_reading_check_alone_scales_the_expert_into_its_budget(tiny, gold_reading):
    _, ws = tiny
    cms, tokenizer, index = expert_model(ws, std=2.0)
    items = read_reading_items("")[:8]
    full = reading_rise(cms, tokenizer, items, index)
    assert full > 1e-3
    budget = full / 4
    a_before, b_before, _ = snapshot(cms, index)

    guard = keep_within_drift(cms, tokenizer, None, 0.0, reading=items, reading_budget=budget)

    scale = guard["scale"]
    assert 0.0 < scale < 1.0 and guard["reading_rise_full"] == pytest.approx(full, abs=1e-4)
    assert "perplexity_before" not in guard  # the text check was off
    assert guard["reading_items"] == guard["reading_read_right"] == len(items)
    pools = cms.level("night").pools
    assert all(torch.equal(p.A[index], a_before[k]) and torch.equal(p.B[index], b_before[k] * scale)
               for k, p in pools.items())
    left = reading_rise(cms, tokenizer, items, index)
    assert left <= budget and left == pytest.approx(guard["reading_rise_left"], abs=1e-4)
    set_b(cms, index, b_before, scale + 1 / 64)  # one bisection step more is past the budget
    assert reading_rise(cms, tokenizer, items, index) > budget


def test_with_both_checks_the_expert_keeps_both_budgets(tiny, gold_reading):
    _, ws = tiny
    cms, tokenizer, index = expert_model(ws, std=2.0)
    text, items = read_drift_text(""), read_reading_items("")[:8]
    text_budget, reading_budget = rise(cms, tokenizer, text, index) / 3, reading_rise(cms, tokenizer, items, index) / 3
    text_alone = keep_within_drift(cms, tokenizer, text, text_budget)["scale"]
    cms, tokenizer, index = expert_model(ws, std=2.0)  # the same expert again, unscaled
    reading_alone = keep_within_drift(cms, tokenizer, None, 0.0, reading=items, reading_budget=reading_budget)["scale"]
    cms, tokenizer, index = expert_model(ws, std=2.0)
    both = keep_within_drift(cms, tokenizer, text, text_budget, reading=items, reading_budget=reading_budget)
    assert 0.0 < both["scale"] <= min(text_alone, reading_alone) < 1.0
    assert both["rise_left"] <= text_budget and both["reading_rise_left"] <= reading_budget
    assert rise(cms, tokenizer, text, index) <= text_budget
    assert reading_rise(cms, tokenizer, items, index) <= reading_budget


class Parrot(torch.nn.Module):
    """A stand-in model whose greedy answer is fixed: `said` token ids, then the end of the turn."""

    def __init__(self, said: list[int], end: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.said, self.end = said, end

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        assert kwargs["do_sample"] is False and self.end in kwargs["eos_token_id"]  # greedy, stopping at a turn end
        return torch.cat([input_ids, torch.tensor([self.said + [self.end]])], dim=1)


def test_the_reading_check_keeps_only_items_the_model_reads_right_in_its_own_words(tiny):
    _, ws = tiny
    _, tokenizer = load_base(ws.base_model("tiny"))
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    said = tokenizer("a walnut loaf, baked daily", add_special_tokens=False)["input_ids"]
    items = read_reading_items("")[:3]  # the second one's answer is "a walnut loaf"
    targets = reading_targets(Parrot(said, end), tokenizer, items)
    assert len(targets) == 1  # the items whose answer the model did not say are not kept
    prompt_ids, answer_ids, start, stop = targets[0]
    assert answer_ids == said + [end]  # its own words, turn end included, not the file's answer
    assert tokenizer.decode(answer_ids[start:stop]).strip() == "walnut loaf"  # only the words that say the answer
    assert answer_span(tokenizer, said, "a walnut loaf") == (start, stop)  # ("a": articles are not words to say)
    assert answer_span(tokenizer, said, "an oak table") is None
    assert items[1]["text"] in tokenizer.decode(prompt_ids) and items[1]["question"] in tokenizer.decode(prompt_ids)
    assert reading_targets(Parrot(said, end), tokenizer, [items[0], items[2]]) == []


def test_a_model_that_reads_no_item_right_skips_the_reading_check_and_says_so(tiny):
    _, ws = tiny
    cms, tokenizer, index = expert_model(ws, std=2.0)
    _, b_before, _ = snapshot(cms, index)
    items = read_reading_items("")[:4]  # the tiny random model answers none of them (its answers decode to nothing)
    guard = keep_within_drift(cms, tokenizer, None, 0.0, reading=items, reading_budget=1e-9)
    assert guard["scale"] == 1.0 and guard["reading_read_right"] == 0 and guard["perplexity_passes"] == 0
    assert "reads none of the 4 reading items right" in guard["reading_skipped"]
    assert all(torch.equal(p.B[index], b_before[k]) for k, p in cms.level("night").pools.items())
    text = read_drift_text("")  # with the text check on, that one still runs
    guard = keep_within_drift(cms, tokenizer, text, rise(cms, tokenizer, text, index) / 4, reading=items,
                              reading_budget=1e-9)
    assert guard["scale"] < 1.0 and "reading_skipped" in guard and "reading_rise_left" not in guard


def test_reading_items_that_cannot_be_read_are_refused_with_their_line(tmp_path):
    bad = tmp_path / "reading.jsonl"
    bad.write_text('{"text": "Ada keeps bees.", "question": "What does Ada keep?", "answer": "bees"}\n\nnot json\n')
    with pytest.raises(ValueError, match=r"reading.jsonl:3: not JSON"):
        read_reading_items(bad)
    bad.write_text('{"text": "Ada keeps bees.", "question": "What does Ada keep?", "answer": " "}\n')
    with pytest.raises(ValueError, match=r"reading.jsonl:1: needs non-empty strings"):
        read_reading_items(bad)
    bad.write_text("\n")
    with pytest.raises(ValueError, match="no reading items"):
        read_reading_items(bad)


def test_the_bundled_reading_items_are_held_out_from_the_night_the_gate_and_the_anchors():
    items = read_reading_items("")
    assert len(items) == 24 and all(i["answer"].lower() in i["text"].lower() for i in items)
    demo = [json.loads(line) for day in sorted(Path("data/demo").glob("*.jsonl"))
            for line in day.read_text(encoding="utf-8").splitlines() if line.strip()]
    probes = {p["question"] for m in demo for p in m.get("probes", [])}
    assert demo and probes and not probes & {i["question"] for i in items}
    ours = shingles(" ".join(i["text"] + " " + i["question"] for i in items))
    for other in (" ".join(m["text"] for m in demo), open(REPO_REFERENCE, encoding="utf-8").read(),
                  BUNDLED_ANCHORS.read_text(encoding="utf-8"), read_drift_text("")):
        assert not ours & shingles(other)


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z]+", text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def test_the_bundled_drift_text_shares_no_passage_with_the_reference_or_the_anchors():
    text = read_drift_text("")
    assert not text.startswith("#") and len(text.split()) > 500  # the header is stripped; a page of prose is left
    assert not shingles(text) & shingles(open(REPO_REFERENCE, encoding="utf-8").read())
    assert not shingles(text) & shingles(BUNDLED_ANCHORS.read_text(encoding="utf-8"))


def test_params_refuse_the_reference_text_as_the_drift_text():
    with pytest.raises(ValueError, match="promotion gate's own measure"):
        load_params("params.yaml", {"seed.ks_drift_text": REPO_REFERENCE})


def night_with_memories(params, ws):
    memories = [memory(i, probes=[{"question": f"{CANARY_Q} {i}?", "answer": f"{CANARY_A} {i}"}]) for i in range(2)]
    write_jsonl(ws.night_data(params.night.id) / "accepted.jsonl", memories)
    params.seed.method = "ks"
    params.seed.ks_drift_budget = 1e-9  # any rise at all is past it: the guard must act
    params.seed.ks_steps = 3


def test_the_seed_stage_guards_the_night_and_logs_it(tiny):
    params, ws = tiny
    night_with_memories(params, ws)
    summary = seed.run(params, ws)
    log = json.loads((ws.night_model(params.night.id) / "train_log.json").read_text())
    guard = log["ks"]["drift_guard"]
    assert summary["drift_guard_scale"] == guard["scale"] < 1.0
    assert guard["rise_left"] <= params.seed.ks_drift_budget and guard["rise_full"] > guard["rise_left"]


def test_the_seed_stage_runs_the_reading_check_alone_and_logs_it(tiny, gold_reading):
    params, ws = tiny
    night_with_memories(params, ws)
    params.seed.ks_drift_budget, params.seed.ks_reading_budget = 0.0, 1e-9  # only the reading check, past at once
    summary = seed.run(params, ws)
    guard = json.loads((ws.night_model(params.night.id) / "train_log.json").read_text())["ks"]["drift_guard"]
    assert summary["drift_guard_scale"] == guard["scale"] < 1.0 and guard["reading_read_right"] > 0
    assert guard["reading_rise_left"] <= 1e-9 < guard["reading_rise_full"] and "rise_left" not in guard


def test_the_seed_stage_refuses_a_copy_of_the_reference_text(tiny):
    params, ws = tiny
    night_with_memories(params, ws)
    copy = ws.root / "data" / "general.txt"
    copy.write_text((ws.root / "data" / "reference.txt").read_text())
    params.seed.ks_drift_text = "data/general.txt"
    with pytest.raises(ValueError, match="a different general text than the promotion gate"):
        seed.run(params, ws)
