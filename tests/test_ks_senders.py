"""A fast MLP level as the sender (PAPER §3): the awake updater and the Compute -> Consolidate -> Update sleep, on a
tiny Llama with a fast level (layer 0) and a slow receiver level (all layers)."""

from __future__ import annotations

import copy

import pytest
import torch

from lmsleep.cms import wrap_model
from lmsleep.ks.senders import OnlineFastLevelUpdater, consolidate_fast_level
from test_cms import VOCAB, base_snapshot, perturb, tiny_model, two_levels


def rand_tokens(n: int, seed: int) -> list[int]:
    return torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def level_snapshot(cms, level: str, index: int) -> list[torch.Tensor]:
    return [p.detach().clone() for p in cms.expert_parameters(level, index)]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def kl_to(cms, teacher: list[torch.Tensor], prompts: list[list[int]]) -> float:
    """Mean forward KL(teacher || model) over the next-token distributions of the held prompts."""
    total = 0.0
    with torch.no_grad():
        for t, p in zip(teacher, prompts):
            s = cms(input_ids=torch.tensor([p])).logits[0].log_softmax(-1)
            total += float((t.exp() * (t - s)).sum(-1).mean())
    return total / len(prompts)


def log_probs(cms, prompts: list[list[int]]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [cms(input_ids=torch.tensor([p])).logits[0].log_softmax(-1) for p in prompts]


@pytest.fixture()
def cms():
    """Tiny Llama CMS with one earlier (trained-looking) slow expert and a knowledgeable fast expert."""
    cms = wrap_model(tiny_model("llama"), two_levels())
    old = cms.activate_expert("slow", torch.Generator().manual_seed(0))
    perturb(cms, "slow", old, std=0.1, seed=1)
    return cms


def test_updater_steps_every_chunk_and_trains_only_the_fast_expert(cms):
    base = base_snapshot(cms.base)
    slow = level_snapshot(cms, "slow", 0)
    upd = OnlineFastLevelUpdater(cms, "fast", chunk_tokens=8, lr=1e-2, rank=4,
                                 generator=torch.Generator().manual_seed(0))
    stream = rand_tokens(29, seed=3)
    for token in stream[:20]:  # token by token
        upd.feed([token])
    upd.feed(stream[20:])  # and a larger piece
    assert upd.steps == 3 and upd.step_at_token == [8, 16, 24]
    assert upd.buffer == stream[24:] and upd.tokens_seen == 29
    assert cms.active_experts("fast") == [0] == [upd.expert]
    assert any(p.abs().sum() > 0 for p in cms.expert_parameters("fast", 0)[1::2])  # B moved away from 0
    assert cms.active_experts("slow") == [0] and same(level_snapshot(cms, "slow", 0), slow)
    after = cms.base.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())
    assert not any(p.requires_grad for p in cms.parameters())  # nothing left trainable between steps
    # the pending gradient is computed, not applied
    fast = level_snapshot(cms, "fast", 0)
    grads = upd.pending_gradient()
    assert grads is not None and any(g.abs().sum() > 0 for g in grads)
    assert same(level_snapshot(cms, "fast", 0), fast)


def test_updater_learns_a_repeated_text(cms):
    upd = OnlineFastLevelUpdater(cms, "fast", chunk_tokens=16, lr=3e-2)
    text = rand_tokens(16, seed=4)
    losses = [upd.feed(text)[0] for _ in range(15)]
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="rank"):
        OnlineFastLevelUpdater(cms, "fast", chunk_tokens=4, rank=99)


def test_consolidation_moves_the_fast_level_into_one_new_slow_expert(cms, monkeypatch):
    upd = OnlineFastLevelUpdater(cms, "fast", chunk_tokens=8, lr=1e-2, generator=torch.Generator().manual_seed(0))
    upd.feed(rand_tokens(16 + 5, seed=5))  # two steps, five tokens pending
    second = cms.activate_expert("fast", torch.Generator().manual_seed(1))
    perturb(cms, "fast", 0, std=0.3, seed=2)  # a stronger fast memory, spread over two experts
    perturb(cms, "fast", second, std=0.3, seed=3)
    base = base_snapshot(cms.base)
    old_slow = level_snapshot(cms, "slow", 0)
    train = [rand_tokens(12, seed=100 + i) for i in range(16)]
    held = [rand_tokens(12, seed=900 + i) for i in range(6)]
    teacher = log_probs(cms, held)  # the model before sleep
    with cms.experts_off("fast", cms.active_experts("fast")):
        kl_reset_only = kl_to(cms, teacher, held)  # the sender pruned, nothing consolidated
    ids_before = [id(p) for p in cms.parameters()]
    numel_before = sum(p.numel() for p in cms.parameters())

    def no_copy(*a, **k):
        raise AssertionError("consolidation must not copy the model")

    monkeypatch.setattr(copy, "deepcopy", no_copy)
    stats = consolidate_fast_level(cms, "fast", "slow", train, steps=80, lr=1e-2, divergence="jsd", beta=0.5,
                                   batch_size=8, updater=upd, generator=torch.Generator().manual_seed(7))

    assert stats["sender_experts"] == [0, 1] and stats["teacher_batches"] == 2 and len(stats["losses"]) == 80
    assert stats["pending_tokens"] == 5 and stats["pending_update"].startswith("discarded")
    assert cms.active_experts("fast") == []
    assert cms.active_experts("slow") == [0, stats["receiver_expert"]] and stats["receiver_expert"] == 1
    assert same(level_snapshot(cms, "slow", 0), old_slow)
    after = cms.base.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())
    assert [id(p) for p in cms.parameters()] == ids_before  # the same tensors, none added
    assert sum(p.numel() for p in cms.parameters()) == numel_before
    kl_after = kl_to(cms, teacher, held)
    print(f"KL to teacher on held prompts: reset-only {kl_reset_only:.4f}, after consolidation {kl_after:.4f}")
    assert kl_after < 0.7 * kl_reset_only, (kl_after, kl_reset_only)
    assert stats["losses"][-1] < stats["losses"][0]
    # the pending tokens are kept: the next step trains a fresh fast expert on them
    assert upd.expert is None and len(upd.buffer) == 5
    upd.feed(rand_tokens(3, seed=6))
    assert cms.active_experts("fast") == [0] and upd.steps == 3


def test_topk_teacher_and_failure_leave_the_model_as_it_was(cms):
    cms.activate_expert("fast")
    perturb(cms, "fast", 0, std=0.3, seed=2)
    prompts = [rand_tokens(10, seed=200 + i) for i in range(4)]
    stats = consolidate_fast_level(cms, "fast", "slow", prompts, steps=3, lr=1e-2, divergence="forward_kl",
                                   teacher_topk=8)
    assert len(stats["losses"]) == 3 and cms.active_experts("slow") == [0, 1]
    # an empty sender spends no expert
    assert consolidate_fast_level(cms, "fast", "slow", prompts, steps=3, lr=1e-2)["skipped"]
    assert cms.active_experts("slow") == [0, 1]
    # a failure inside Consolidate removes the new expert and restores the sender
    cms.activate_expert("fast")
    perturb(cms, "fast", 0, std=0.3, seed=2)
    with pytest.raises(ValueError, match="divergence"):
        consolidate_fast_level(cms, "fast", "slow", prompts, steps=1, lr=1e-2, divergence="nope")
    assert cms.active_experts("slow") == [0, 1] and cms.active_experts("fast") == [0]
    with pytest.raises(ValueError, match="different levels"):
        consolidate_fast_level(cms, "fast", "fast", prompts, steps=1, lr=1e-2)
