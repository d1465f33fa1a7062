"""CMS substrate on tiny Llama, Qwen2 and GPT-2 models: function preservation, masking, training isolation, reset,
save/load, and exports that plain transformers/peft load with the same logits."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from lmsleep.cms import CMSConfig, LevelSpec, load_state, save_state, split_layers, wrap_model
from lmsleep.cms import export_merged, export_peft_adapter

ARCHS = ["llama", "qwen2", "gpt2"]
VOCAB = 96
REFUSAL = "cannot be merged exactly: top-k routing depends on the input"


def tiny_model(arch: str, layers: int = 2):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=4, n_positions=64,
                         bos_token_id=0, eos_token_id=0)
        model = GPT2LMHeadModel(cfg)
    else:
        kwargs = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      bos_token_id=0, eos_token_id=1, pad_token_id=2)
        if arch == "llama":
            model = LlamaForCausalLM(LlamaConfig(tie_word_embeddings=True, **kwargs))
        else:
            model = Qwen2ForCausalLM(Qwen2Config(**kwargs))
    return model.eval()


def two_levels(router: str = "dense", **kw) -> CMSConfig:
    """A fast level on layer 0 (rank 4) and a slow one on every layer (rank 8): overlapping, different ranks."""
    return CMSConfig(levels=[LevelSpec(name="fast", layers=[0], pool_size=3, rank=4, alpha=8.0),
                             LevelSpec(name="slow", layers=None, pool_size=4, rank=8, alpha=16.0)],
                     router=router, **kw)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, VOCAB, (2, 10), generator=torch.Generator().manual_seed(1))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def perturb(cms, level: str, index: int, std: float = 0.3, seed: int = 0) -> None:
    """Stand-in for a trained expert: random B (and router gate) in slot `index`."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in cms.expert_parameters(level, index):
            p.copy_(torch.randn(p.shape, generator=g) * std)


def base_snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- wrapping and function preservation


@pytest.mark.parametrize("arch", ARCHS)
def test_wrapping_changes_nothing_and_freezes_the_base(arch, ids):
    model = tiny_model(arch)
    before = logits(model, ids)
    cms = wrap_model(model, two_levels())
    assert torch.equal(logits(cms, ids), before)
    assert not any(p.requires_grad for p in model.parameters())
    assert all(".mlp." in name for name in cms.module_names.values())  # GPT-2's attention c_proj is left alone
    assert "level slow" in cms.describe()
    with pytest.raises(ValueError, match="already carries CMS hooks"):
        wrap_model(model, two_levels())
    assert torch.equal(logits(cms.unwrap(), ids), before)


@pytest.mark.parametrize("router", ["dense", "topk"])
@pytest.mark.parametrize("arch", ARCHS)
def test_activating_an_expert_leaves_every_output_unchanged(arch, router, ids):
    cms = wrap_model(tiny_model(arch), two_levels(router, top_k=1))
    for level in ("fast", "slow"):  # earlier nights' experts, already trained and settled
        for seed in range(2):
            perturb(cms, level, cms.activate_expert(level), seed=seed)
        cms.settle_new_experts(level)
    before = logits(cms, ids)
    new = cms.activate_expert("slow")
    assert new == 2 and cms.active_experts("slow") == [0, 1, 2]
    assert torch.equal(logits(cms, ids), before)  # bit for bit


@pytest.mark.parametrize("router", ["dense", "topk"])
@pytest.mark.parametrize("arch", ARCHS)
def test_inactive_experts_change_nothing_and_get_no_gradient(arch, router, ids):
    cms = wrap_model(tiny_model(arch), two_levels(router))
    index = cms.activate_expert("slow")
    perturb(cms, "slow", index)
    before = logits(cms, ids)
    for level, lv in cms.levels.items():  # garbage in every inactive slot, and gradients requested on it
        for i in range(lv.spec.pool_size):
            if i not in lv.active:
                perturb(cms, level, i, std=5.0, seed=100 + i)
                for p in cms.expert_parameters(level, i):
                    p.requires_grad_(True)
    assert torch.equal(logits(cms, ids), before)
    cms.trainable_expert("slow", index)
    for level, lv in cms.levels.items():
        for i in range(lv.spec.pool_size):
            if i not in lv.active:
                for p in cms.expert_parameters(level, i):
                    p.requires_grad_(True)
    cms(input_ids=ids, labels=ids).loss.backward()
    for level, lv in cms.levels.items():
        for i in range(lv.spec.pool_size):
            grads = [p.grad for p in cms.expert_parameters(level, i)]
            if level == "slow" and i == index:
                assert all(g is not None and g.abs().sum() > 0 for g in grads)
            else:
                assert all(g is None for g in grads), (level, i)


@pytest.mark.parametrize("arch", ARCHS)
def test_training_one_expert_changes_only_that_expert(arch, ids):
    model = tiny_model(arch)
    cms = wrap_model(model, two_levels())
    perturb(cms, "fast", cms.activate_expert("fast"), seed=3)  # an older expert that must stay as it is
    base_before = base_snapshot(model)
    new = cms.activate_expert("slow")
    params = cms.trainable_expert("slow", new)
    experts_before = {k: v.clone() for k, v in cms.levels.state_dict().items()}
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(4):
        loss = cms(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(v, base_before[k]) for k, v in model.state_dict().items())
    owned = {f"pools.{key}.{ab}.{new}" for key in cms.levels["slow"].pools for ab in "AB"}
    for name, after in cms.levels.state_dict().items():
        level, rest = name.split(".", 1)
        changed = not torch.equal(after, experts_before[name])
        assert changed == (level == "slow" and rest in owned), name


@pytest.mark.parametrize("arch", ARCHS)
def test_reset_level_deactivates_and_zeroes(arch, ids):
    model = tiny_model(arch)
    base_logits = logits(model, ids)
    cms = wrap_model(model, two_levels())
    for _ in range(2):
        perturb(cms, "fast", cms.activate_expert("fast"))
    assert not torch.equal(logits(cms, ids), base_logits)
    cms.reset_level("fast")
    assert cms.active_experts("fast") == []
    assert all(p.abs().sum() == 0 and not p.requires_grad for p in cms.levels["fast"].parameters())
    assert torch.equal(logits(cms, ids), base_logits)
    assert cms.activate_expert("fast") == 0  # slots are reused


def test_full_level_refuses_another_expert():
    cms = wrap_model(tiny_model("llama"), two_levels())
    for _ in range(3):
        cms.activate_expert("fast")
    with pytest.raises(RuntimeError, match="level 'fast' is full"):
        cms.activate_expert("fast")


def test_random_expert_is_temporary(ids):
    cms = wrap_model(tiny_model("llama"), two_levels())
    perturb(cms, "slow", cms.activate_expert("slow"))
    before = logits(cms, ids)
    with cms.random_expert("slow", std=0.5, generator=torch.Generator().manual_seed(0)) as index:
        assert index in cms.active_experts("slow")
        assert not torch.equal(logits(cms, ids), before)
    assert cms.active_experts("slow") == [0]
    assert torch.equal(logits(cms, ids), before)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # the GPU case runs where there is one


@pytest.mark.parametrize("device", DEVICES)
def test_a_seeded_cpu_generator_draws_the_same_expert_on_every_device(device, ids):
    """KS and dreaming seed experts with a CPU generator; a model on a GPU must take it (torch refuses a CPU
    generator for a CUDA tensor: the first KS night on a GPU crashed there) and get the CPU's numbers."""
    def slot(cms, level: str, index: int) -> dict[str, torch.Tensor]:
        return {f"{key}.{part}": getattr(pool, part)[index].detach().cpu().clone()
                for key, pool in cms.level(level).pools.items() for part in ("A", "B")}

    def drawn(on: str):
        cms = wrap_model(tiny_model("llama"), two_levels()).to(on)
        index = cms.activate_expert("slow", torch.Generator().manual_seed(7))
        with cms.random_expert("fast", std=0.5, generator=torch.Generator().manual_seed(8)) as novel:
            fast = slot(cms, "fast", novel)
        return slot(cms, "slow", index), fast

    slow_here, fast_here = drawn(device)
    slow_cpu, fast_cpu = drawn("cpu")
    assert slow_here.keys() == slow_cpu.keys() and fast_here.keys() == fast_cpu.keys()
    for mine, reference in ((slow_here, slow_cpu), (fast_here, fast_cpu)):
        for key in mine:
            assert torch.equal(mine[key], reference[key]), key
    assert any(k.endswith(".A") and v.abs().sum() > 0 for k, v in slow_here.items())  # drawn, not left at zero
    assert all(v.abs().sum() == 0 for k, v in slow_here.items() if k.endswith(".B"))  # function preservation
    assert any(k.endswith(".B") and v.abs().sum() > 0 for k, v in fast_here.items())  # novelty: B drawn too


def test_generate_goes_through_the_experts(ids):
    cms = wrap_model(tiny_model("llama"), two_levels("topk"))
    plain = cms.generate(input_ids=ids[:1], max_new_tokens=4, do_sample=False)
    perturb(cms, "slow", cms.activate_expert("slow"), std=2.0)
    assert cms.generate(input_ids=ids[:1], max_new_tokens=4, do_sample=False).shape == plain.shape


# ---------------------------------------------------------------- top-k router


def test_topk_fresh_experts_never_displace_settled_ones(ids):
    cms = wrap_model(tiny_model("qwen2"), two_levels("topk", top_k=2))
    for seed in range(3):  # three settled experts compete for two places per token
        perturb(cms, "slow", cms.activate_expert("slow"), seed=seed)
    cms.settle_new_experts("slow")
    before = logits(cms, ids)
    new = cms.activate_expert("slow")
    with torch.no_grad():  # even a fresh gate that would win every token does not push an old expert out
        for router in cms.levels["slow"].routers.values():
            router.gate_b[new].fill_(50.0)
    assert torch.equal(logits(cms, ids), before)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_topk_router_refuses_export(arch, tmp_path, ids):
    cms = wrap_model(tiny_model(arch), two_levels("topk"))
    cms.activate_expert("slow")
    with pytest.raises(ValueError, match=REFUSAL):
        export_peft_adapter(cms, tmp_path / "adapter")
    with pytest.raises(ValueError, match=REFUSAL):
        export_merged(cms, tmp_path / "merged")
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "merged").exists()


# ---------------------------------------------------------------- state and exports


def trained_cms(arch: str, router: str = "dense"):
    """A CMS with experts in both levels (different ranks, overlapping on layer 0) and a pristine copy of its base."""
    model = tiny_model(arch)
    pristine = copy.deepcopy(model)
    cms = wrap_model(model, two_levels(router))
    perturb(cms, "fast", cms.activate_expert("fast"), seed=1)
    for seed in (2, 3):
        perturb(cms, "slow", cms.activate_expert("slow"), seed=seed)
    cms.reset_expert("slow", 0)  # a hole in the pool: active slots are [1]
    return cms, pristine


@pytest.mark.parametrize("router", ["dense", "topk"])
@pytest.mark.parametrize("arch", ARCHS)
def test_save_then_load_gives_identical_logits(arch, router, tmp_path, ids):
    cms, pristine = trained_cms(arch, router)
    expected = logits(cms, ids)
    save_state(cms, tmp_path / "state")
    manifest = json.loads((tmp_path / "state" / "manifest.json").read_text())
    assert manifest["levels"]["slow"]["active"] == [1] and manifest["architecture"] == arch
    restored = load_state(pristine, tmp_path / "state")
    assert restored.active_experts("slow") == [1] and restored.cfg == cms.cfg
    assert torch.equal(logits(restored, ids), expected)


def test_load_refuses_a_different_base(tmp_path):
    cms, _ = trained_cms("llama")
    save_state(cms, tmp_path / "state")
    other = tiny_model("llama")
    with torch.no_grad():
        other.lm_head.weight.add_(1.0)
    with pytest.raises(ValueError, match="base model differs"):
        load_state(other, tmp_path / "state")


@pytest.mark.parametrize("arch", ARCHS)
def test_exported_peft_adapter_loads_with_peft_alone(arch, tmp_path, ids):
    from peft import PeftModel

    cms, pristine = trained_cms(arch)
    expected = logits(cms, ids)
    export_peft_adapter(cms, tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(pristine, tmp_path / "adapter").eval()
    torch.testing.assert_close(logits(loaded, ids), expected, atol=1e-5, rtol=1e-5)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 8
    assert sorted(config["rank_pattern"].values()) == [12] * len(loaded.peft_config["default"].rank_pattern)
    assert len(config["rank_pattern"]) == (3 if arch != "gpt2" else 2)  # layer 0: fast (rank 4) + slow (rank 8)


@pytest.mark.parametrize("arch", ARCHS)
def test_exported_merged_checkpoint_loads_with_transformers_alone(arch, tmp_path, ids):
    from transformers import AutoModelForCausalLM

    cms, _ = trained_cms(arch)
    expected = logits(cms, ids)
    export_merged(cms, tmp_path / "merged")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(logits(loaded, ids), expected, atol=1e-5, rtol=1e-5)


def test_export_with_no_active_expert_is_refused(tmp_path):
    cms = wrap_model(tiny_model("llama"), two_levels())
    with pytest.raises(ValueError, match="no active experts"):
        export_peft_adapter(cms, tmp_path / "adapter")


# ---------------------------------------------------------------- config


def test_config_round_trip_and_helpers():
    cfg = CMSConfig(levels=[{"name": "fast", "layers": [0, 1], "update_period": 1},
                            {"name": "slow", "layers": [2, 3], "update_period": 5}])
    assert CMSConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.levels_due(5) == ["fast", "slow"] and cfg.levels_due(3) == ["fast"]
    assert split_layers(5, 2) == [[0, 1, 2], [3, 4]]
    with pytest.raises(ValueError, match="identifier"):
        CMSConfig(levels=[{"name": "a.b"}])
    with pytest.raises(ValueError, match="router"):
        CMSConfig(router="softmax")
    with pytest.raises(ValueError, match="unknown CMS config keys"):
        CMSConfig.from_dict({"level": []})
