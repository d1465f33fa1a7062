"""The multi-level consolidation chain (lmsleep.ks.chain): the schedule of a 3-level chain, full pools, the context
sender, and a live chain on a tiny Llama where every consolidation changes only its receiving expert."""

from __future__ import annotations

import pytest
import torch

from lmsleep.cms import CMSConfig, LevelSpec, wrap_model
from lmsleep.ks import chain as chain_module
from lmsleep.ks.chain import ChainSchedule, ChainSettings, ConsolidationChain, consolidate_context, plan_schedule
from test_cms import VOCAB, base_snapshot, tiny_model


def three_levels(pools=(2, 2, 3), periods=(1, 2, 4), unit="steps") -> CMSConfig:
    return CMSConfig(levels=[LevelSpec(name=f"l{k + 1}", layers=None if k else [0], update_period=p, pool_size=n,
                                       rank=4, alpha=8.0) for k, (p, n) in enumerate(zip(periods, pools))],
                     period_unit=unit)


def as_tuples(events) -> list[tuple]:
    return [(e.window, e.sender, e.receiver, e.reason) for e in events]


def rand_tokens(n: int, seed: int) -> list[int]:
    return torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def all_expert_tensors(cms) -> dict[tuple, torch.Tensor]:
    return {(name, i, j): p.detach().clone() for name, lv in cms.levels.items() for i in range(lv.spec.pool_size)
            for j, p in enumerate(lv.slot_parameters(i))}


# ---------------------------------------------------------------- the schedule, without a model


def test_schedule_of_a_three_level_chain():
    events = as_tuples(plan_schedule(three_levels(pools=(2, 2, 4)), [10] * 8))
    every = "every window"
    assert events == [
        (1, "context", "l1", every),
        (2, "context", "l1", every), (2, "l1", "l2", "period"),
        (3, "context", "l1", every),
        (4, "context", "l1", every), (4, "l1", "l2", "period"), (4, "l2", "l3", "period"),
        (5, "context", "l1", every),
        (6, "context", "l1", every), (6, "l1", "l2", "period"),
        (7, "context", "l1", every),
        (8, "context", "l1", every), (8, "l1", "l2", "period"), (8, "l2", "l3", "period"),
    ]


def test_full_pools_consolidate_upward_and_a_full_last_level_refuses():
    # l1 holds 2 experts but l2 is due only every 3 windows: window 3 first empties the full l1 into l2
    events = as_tuples(plan_schedule(three_levels(pools=(2, 4, 4), periods=(1, 3, 100)), [10] * 3))
    assert events == [(1, "context", "l1", "every window"), (2, "context", "l1", "every window"),
                      (3, "l1", "l2", "pool full"), (3, "context", "l1", "every window"), (3, "l1", "l2", "period")]
    # a cascade: l1 and l2 full at once
    events = as_tuples(plan_schedule(three_levels(pools=(1, 1, 4), periods=(1, 100, 100)), [10] * 3))
    assert events[-3:] == [(3, "l2", "l3", "pool full"), (3, "l1", "l2", "pool full"),
                           (3, "context", "l1", "every window")]
    # l3 (3 slots) receives at windows 4, 8, 12; window 16 would need a fourth
    assert len(plan_schedule(three_levels(), [10] * 15)) > 0
    with pytest.raises(RuntimeError, match="last level 'l3' is full"):
        plan_schedule(three_levels(), [10] * 16)


def test_token_periods_and_bad_configs():
    cfg = three_levels(pools=(4, 4, 4), periods=(1, 25, 50), unit="tokens")
    events = as_tuples(plan_schedule(cfg, [10, 10, 10, 10, 10]))  # totals 10, 20, 30 (l2), 40, 50 (l2, l3)
    assert [e for e in events if e[1] != "context"] == [(3, "l1", "l2", "period"), (5, "l1", "l2", "period"),
                                                        (5, "l2", "l3", "period")]
    with pytest.raises(ValueError, match="update_period must be 1"):
        plan_schedule(three_levels(periods=(2, 2, 4)), [10])
    cfg = three_levels(unit="nights")  # a window is one sleep of the context sender: nights count windows too
    assert len(plan_schedule(cfg, [10] * 4)) == 7
    cfg.period_unit = "fortnights"
    with pytest.raises(ValueError, match="counts windows"):
        ChainSchedule(cfg)


# ---------------------------------------------------------------- the context sender


def kl_to_teacher(cms, prefix, window, prompts) -> float:
    """Mean forward KL over the compared positions: model with the window vs model without it."""
    total = 0.0
    with torch.no_grad():
        for p in prompts:
            t = cms(input_ids=torch.tensor([prefix + window + p])).logits[0, len(prefix) + len(window) - 1:]
            s = cms(input_ids=torch.tensor([prefix + p])).logits[0, len(prefix) - 1:]
            t, s = t.log_softmax(-1), s.log_softmax(-1)
            total += float((t.exp() * (t - s)).sum(-1).mean())
    return total / len(prompts)


def test_context_sender_trains_only_the_new_expert_and_approaches_the_teacher():
    cms = wrap_model(tiny_model("llama"), three_levels())
    old = cms.activate_expert("l2", torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in cms.expert_parameters("l2", old):
            p.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    base, experts = base_snapshot(cms.base), all_expert_tensors(cms)
    prefix, window = [0], rand_tokens(24, seed=1)
    prompts = [rand_tokens(6, seed=10 + i) for i in range(6)]
    before = kl_to_teacher(cms, prefix, window, prompts)
    stats = consolidate_context(cms, "l1", window, prompts, prefix, steps=60, lr=2e-2, batch_size=3,
                                generator=torch.Generator().manual_seed(2))
    after = kl_to_teacher(cms, prefix, window, prompts)
    print(f"KL(teacher with window || student without): before {before:.4f}, after {after:.4f}")
    assert after < 0.7 * before and stats["losses"][-1] < stats["losses"][0]
    assert stats["receiver_expert"] == 0 and cms.active_experts("l1") == [0] and cms.active_experts("l2") == [old]
    assert len(stats["teacher_next"]) == len(prompts)
    now = all_expert_tensors(cms)
    changed = {k[:2] for k in experts if not torch.equal(experts[k], now[k])}
    assert changed == {("l1", 0)}
    assert all(torch.equal(cms.base.state_dict()[k], v) for k, v in base.items())
    assert not any(p.requires_grad for p in cms.parameters())
    with pytest.raises(ValueError, match="does not fit"):
        consolidate_context(cms, "l1", rand_tokens(70, seed=3), prompts, prefix, steps=1)
    with pytest.raises(ValueError, match="divergence"):  # a failure leaves no half-made expert behind
        consolidate_context(cms, "l1", window, prompts, prefix, steps=1, divergence="nope")
    assert cms.active_experts("l1") == [0]


# ---------------------------------------------------------------- a live chain


def test_live_chain_follows_the_schedule_and_touches_only_the_receiver(monkeypatch):
    cms = wrap_model(tiny_model("llama"), three_levels())
    base = base_snapshot(cms.base)
    seen: list[tuple] = []

    def checked(fn):
        def run(cms_, *args, **kwargs):
            before = all_expert_tensors(cms_)
            sender = "context" if fn is consolidate_context_orig else args[0]
            receiver = args[0] if sender == "context" else args[1]
            old_active = {name: cms_.active_experts(name) for name in cms_.levels}
            stats = fn(cms_, *args, **kwargs)
            after = all_expert_tensors(cms_)
            new = stats["receiver_expert"]
            assert new not in old_active[receiver]
            for key, tensor in before.items():
                level, slot, _ = key
                if (level, slot) == (receiver, new):
                    continue
                if level == sender and slot in old_active[sender]:
                    assert not after[key].any(), key  # the sender is reset: zeroed and inactive
                    continue
                assert torch.equal(tensor, after[key]), key  # frozen experts stay bit-identical
            assert after[(receiver, new, 1)].any()  # the new expert learnt: its B left zero
            if sender != "context":
                assert cms_.active_experts(sender) == []
            seen.append((sender, receiver))
            return stats

        return run

    consolidate_context_orig = chain_module.consolidate_context
    monkeypatch.setattr(chain_module, "consolidate_context", checked(chain_module.consolidate_context))
    monkeypatch.setattr(chain_module, "consolidate_fast_level", checked(chain_module.consolidate_fast_level))
    chain = ConsolidationChain(cms, ChainSettings(steps=3, level_steps=3, batch_size=4), prefix_ids=[0], seed=1)
    windows = [rand_tokens(16, seed=100 + w) for w in range(4)]
    stats = []
    for w, window in enumerate(windows):
        stats += chain.process_window(window, [rand_tokens(5, seed=200 + 10 * w + i) for i in range(3)])
    expected = as_tuples(plan_schedule(three_levels(), [16] * 4))
    assert [(s["window"], s["sender"], s["receiver"], s["reason"]) for s in stats] == expected
    assert seen == [(e[1], e[2]) for e in expected]
    assert {name: len(cms.active_experts(name)) for name in cms.levels} == {"l1": 0, "l2": 0, "l3": 1}
    assert len(chain.held["l3"]) == 4 * 3 and chain.held["l1"] == chain.held["l2"] == []
    assert all(torch.equal(cms.base.state_dict()[k], v) for k, v in base.items())
    chain.reset()
    assert all(cms.active_experts(name) == [] for name in cms.levels) and chain.schedule.windows == 0


def test_live_chain_refuses_when_the_last_level_is_full():
    cfg = CMSConfig(levels=[LevelSpec(name="l1", layers=[0], pool_size=2, rank=4, alpha=8.0)], period_unit="steps")
    cms = wrap_model(tiny_model("llama"), cfg)
    chain = ConsolidationChain(cms, ChainSettings(steps=1), prefix_ids=[0])
    for w in range(2):
        chain.process_window(rand_tokens(8, seed=w), [rand_tokens(4, seed=50 + w)])
    snapshot = all_expert_tensors(cms)
    with pytest.raises(RuntimeError, match="last level 'l1' is full"):
        chain.process_window(rand_tokens(8, seed=9), [rand_tokens(4, seed=59)])
    now = all_expert_tensors(cms)
    assert all(torch.equal(v, now[k]) for k, v in snapshot.items()) and cms.active_experts("l1") == [0, 1]
    assert chain.schedule.windows == 2 and chain.schedule.active == {"l1": 2}  # the refusal changed nothing
