"""The benchmark baselines and KS ablations of issue 5 (lmsleep.bench.methods, lmsleep.bench.baselines): each runs on
the tiny model through the harness and changes the model; opsd and sleep_ks-expansion train only a LoRA on the
existing weights (no CMS expert) against the model-before-training as teacher; the ablation switches reach the KS
objective; seal_like never sees a probe; method errors are clear."""

import dataclasses
import json

import pytest
import torch
from tinyworld import memory, with_canaries

from lmsleep.bench import methods as bench_methods
from lmsleep.bench.quality import QualityBenchmark
from lmsleep.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

FAST = ["--set", "seed.epochs=1", "--set", "seed.ks_steps=2", "--set", "seed.ks_max_new_tokens=6",
        "--set", "seed.ks_expert_rank=4", "--set", "seed.lora_rank=4", "--set", "seed.ks_prompts_per_memory=2",
        "--set", "seed.ks_question_share=0.5", "--set", "seed.ks_group_size=2", "--set", "evaluate.max_new_tokens=4",
        "--set", "seed.ks_fast_chunk_tokens=8", "--set", "seed.ks_fast_passes=1", "--set", "seed.ks_anchor_prompts=2"]
# SEAL at test size: two self-edits per memory, one trial step, every tried self-edit rewarded (the tiny model's tau
# never rises on its own), so the writer's ReST-EM step and the final SFT on kept self-edits both run
SMALL_SEAL = [f"--set=dream.{k}={v}" for k, v in {
    "dreams_per_memory": 2, "max_new_tokens": 12, "tau_questions": 1, "tau_answers": 1, "trial_steps": 1,
    "writer_steps": 1, "reward_margin": -1e9}.items()]
NEW = ["opsd", "seal_like", "sleep_ks-expansion", "sleep_ks+lti", "sleep_ks-lti", "sleep_ks-semantic_reward",
       "sleep_ks_fast_level"]


@pytest.fixture(scope="module")
def ws(make_tiny_workspace):
    return make_tiny_workspace().ws


def recording_generations(monkeypatch, method: str) -> list[str]:
    """Every prompt `method` generates from while it consolidates (decoded), whatever module asks the model."""
    from transformers.generation.utils import GenerationMixin

    seen, live = [], {}
    original = GenerationMixin.generate

    def generate(self, *args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if live and ids is not None:
            seen.extend(live["tokenizer"].batch_decode(ids, skip_special_tokens=True))
        return original(self, *args, **kwargs)

    def consolidate(model, tokenizer, *rest):
        live["tokenizer"] = tokenizer
        try:
            return wrapped.consolidate(model, tokenizer, *rest)
        finally:
            live.clear()

    wrapped = bench_methods.METHODS[method]
    monkeypatch.setattr(GenerationMixin, "generate", generate)
    monkeypatch.setitem(bench_methods.METHODS, method, dataclasses.replace(wrapped, consolidate=consolidate))
    return seen


def test_new_methods_run_through_the_harness(ws, monkeypatch):
    monkeypatch.setattr(QualityBenchmark, "load", with_canaries(QualityBenchmark.load))
    seal_prompts = recording_generations(monkeypatch, "seal_like")
    out = ws.root / "bench" / "methods-test"
    assert main(["bench", "quality", "--seeds", "1", "--limit", "1", "--model", "tiny", "--root", str(ws.root),
                 "--out", "bench/methods-test", "--option", "sets=demo", "--methods", ",".join(["base", *NEW]),
                 *FAST, *SMALL_SEAL]) == 0
    result = json.loads((out / "seed_quality.json").read_text())
    steps = {s["method"]: s for s in result["steps"]}
    for name in NEW:  # every method trained and left a different model behind
        assert steps[name]["steps"] > 0 and steps[name]["train_texts"] > 0, name
        assert steps[name]["perplexity"] != pytest.approx(result["reference_perplexity_base"], rel=1e-6), name

    # the objective each KS method ran with (the params: lambda 0, forward KL, alpha 1, gamma 0.5)
    objective = {n: (steps[n]["ks_lambda"], steps[n]["ks_divergence"], steps[n]["ks_alpha"], steps[n]["ks_gamma"])
                 for n in NEW if n != "seal_like"}
    assert objective == {"opsd": (1.0, "reverse_kl", 1.0, 0.5), "sleep_ks-expansion": (0.0, "forward_kl", 1.0, 0.5),
                         "sleep_ks+lti": (0.0, "forward_kl", 0.8, 0.5), "sleep_ks-lti": (0.0, "forward_kl", 1.0, 0.5),
                         "sleep_ks-semantic_reward": (0.0, "forward_kl", 0.8, 0.0),
                         "sleep_ks_fast_level": (0.0, "forward_kl", 1.0, 0.5)}
    assert [steps[n]["lti_steps"] for n in ("sleep_ks+lti", "sleep_ks-semantic_reward", "sleep_ks-lti", "opsd")] \
        == [2, 2, 0, 0]
    assert steps["sleep_ks+lti"]["judge"] in ("model", "exact-match") and steps["sleep_ks-semantic_reward"]["judge"] \
        is None  # gamma 0: no judge at all
    for name in ("opsd", "sleep_ks-expansion"):
        assert steps[name]["receiver"].startswith("LoRA r=4 on") and steps[name]["trainable"] > 0
    assert steps["sleep_ks-lti"]["receiver"] == "new CMS expert" and steps["sleep_ks-lti"]["sender"] == "context"
    fast = steps["sleep_ks_fast_level"]  # the day was read awake, then consolidated
    assert fast["sender"] == "fast_level" and fast["receiver"].endswith("from the fast level")
    assert fast["awake_steps"] > 0 and fast["awake_tokens"] > 0

    seal = steps["seal_like"]
    assert seal["made"] == 2 and seal["tested"] == seal["made"] - seal["malformed"] == seal["rewarded"] > 0
    assert seal["writer_steps"] == 1 and seal["final_texts"] == 1 + seal["rewarded"]
    rows = [json.loads(line) for line in (out / "seed_quality_train_texts.jsonl").read_text().splitlines()]
    finals = [r for r in rows if r["method"] == "seal_like" and r.get("use") == "final"]
    assert [r["source"] for r in finals][0] == "memory" and len(finals) == 1 + seal["rewarded"]

    questions = {json.loads(line)["question"] for line in (out / "seed_quality_answers.jsonl").read_text().splitlines()}
    assert {r["method"] for r in rows} == set(NEW)
    for row in rows:  # nothing any method trained on holds a probe
        text = " ".join(str(row.get(k, "")) for k in ("text", "prompt", "completion"))
        assert "canary" not in text.lower() and not any(q in text for q in questions), row
    # nor did seal_like generate from one (the answers of real probes are in the memory text itself; the canaries' not)
    assert seal_prompts and not any("canary" in p.lower() or any(q in p for q in questions) for p in seal_prompts)


def test_ks_into_lora_trains_only_the_lora_against_the_model_before_training(ws, monkeypatch):
    from lmsleep.bench.baselines import LORA, LoraStudent, ks_into_lora
    from lmsleep.cms import experts
    from lmsleep.config import load_params, parse_overrides
    from lmsleep.models import load_base

    def no_expert(*args, **kwargs):
        raise AssertionError("the LoRA baselines must not create a CMS expert")

    monkeypatch.setattr(experts.CMSModel, "__init__", no_expert)
    params = load_params(ws.root / "params.yaml", parse_overrides(FAST[1::2]))
    cfg = dataclasses.replace(params.seed, ks_steps=3, ks_lambda=1.0, ks_divergence="reverse_kl", ks_alpha=1.0,
                              target_modules=["q_proj", "up_proj"])
    model, tokenizer = load_base(ws.base_model("tiny"), "float32")
    model.to("cuda" if torch.cuda.is_available() else "cpu")  # where the night runs: logits compared bit for bit
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    probe_ids = torch.tensor([tokenizer("The ferry crosses the river at dawn.")["input_ids"]], device=model.device)
    with torch.no_grad():
        logits_before = model(probe_ids).logits
    peft_model, losses, stats = ks_into_lora(model, tokenizer, [memory(1), memory(2)], cfg)

    assert len(losses) == 3 and stats["prompts"] > 0 and stats["lti_rewards"] == []
    assert any(t["kind"] == "on-policy" for t in stats["train_texts"])  # lambda 1: every y is the student's own
    trainable = {n: p for n, p in peft_model.named_parameters() if "lora_" in n}
    assert trainable and all(".q_proj." in n or ".up_proj." in n for n in trainable)
    assert all(bool(p.ne(0).any()) for n, p in trainable.items() if "lora_B" in n)  # B started at 0: all moved
    for name, p in peft_model.named_parameters():  # every existing weight is bit for bit as it was
        if "lora_" not in name:
            original = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
            assert torch.equal(p, before[original]), name
    student = LoraStudent(peft_model)
    with torch.no_grad():
        with student.experts_off(LORA, [0]):  # the teacher: the adapter off, i.e. the model before training
            assert torch.equal(student(probe_ids).logits, logits_before)
        assert not torch.allclose(student(probe_ids).logits, logits_before)
    with pytest.raises(ValueError, match="one adapter"):
        with student.experts_off("night", [0]):
            pass

    merged = peft_model.merge_and_unload()
    changed = {n for n, p in merged.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.endswith(("q_proj.weight", "up_proj.weight")) for n in changed)


def test_method_errors_are_clear(ws, capsys):
    assert main(["bench", "quality", "--methods", "base,opsd,nope", "--root", str(ws.root), "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "unknown method(s) nope;" in err and "opsd" in err and "seal_like" in err and "sleep_ks-expansion" in err
    assert main(["bench", "quality", "--seeds", "1", "--limit", "1", "--model", "tiny", "--root", str(ws.root),
                 "--out", "bench/methods-error", "--option", "sets=demo", "--methods", "opsd",
                 "--set", "seed.target_modules=[nope_proj]", *FAST]) == 2
    assert "seed.target_modules ['nope_proj'] match no module of the model" in capsys.readouterr().err


@pytest.mark.parametrize("alpha, gamma", [(1.0, 0.5), (0.6, 0.3)])
def test_ablations_are_defined_whatever_the_params_lti(monkeypatch, alpha, gamma):
    """With the default (no LTI: alpha 1) the LTI methods turn it on at 0.8; params that already use LTI keep their
    alpha; -lti always forces it off; -semantic_reward keeps LTI on and only zeroes gamma."""
    from lmsleep.config import SeedConfig

    ran = {}
    monkeypatch.setattr(bench_methods, "consolidate_ks", lambda m, t, mem, cfg, h: ran.setdefault("cfg", cfg))
    expected = {"sleep_ks+lti": (0.8 if alpha == 1.0 else alpha, gamma), "sleep_ks-lti": (1.0, gamma),
                "sleep_ks-semantic_reward": (0.8 if alpha == 1.0 else alpha, 0.0)}
    for name, (want_alpha, want_gamma) in expected.items():
        ran.clear()
        bench_methods.METHODS[name].consolidate(None, None, [], SeedConfig(ks_alpha=alpha, ks_gamma=gamma), None)
        assert (ran["cfg"].ks_alpha, ran["cfg"].ks_gamma) == (want_alpha, want_gamma), name


def test_every_ablation_the_paper_names_is_a_method():
    from lmsleep.bench.methods import consolidate_ks

    for ablation in ("-lti", "-semantic_reward", "-expansion", "-dream", "-random_expert", "-grad_selection"):
        assert [name for name in bench_methods.METHODS if name.endswith(ablation)], ablation
    assert bench_methods.METHODS["sleep_ks_dream-dream"].consolidate is consolidate_ks


def test_a_ks_night_is_trained_once_and_restored_exactly(ws, monkeypatch):
    """sleep_ks_dream after sleep_ks restores sleep_ks's night instead of training it again, and what dreaming then
    makes of it is bit-identical to a run that trained the night itself."""
    import lmsleep.ks.consolidate as ks_consolidate
    from lmsleep.bench.methods import KS_NIGHTS, History, consolidate_ks, consolidate_ks_dream
    from lmsleep.config import DreamConfig, SeedConfig
    from lmsleep.models import load_base

    cfg = SeedConfig(ks_steps=2, ks_max_new_tokens=6, ks_expert_rank=4, ks_prompts_per_memory=2,
                     ks_question_share=0.5)
    dream = DreamConfig(kinds=["continuation", "qa"], dreams_per_memory=2, max_new_tokens=12, tau_questions=1,
                        tau_answers=1, max_trials=2, trial_steps=1, writer_steps=1, rehearsal_steps=2,
                        reward_margin=-1e9)
    memories = [memory(1), memory(2)]
    model_dir = ws.base_model("tiny")
    trained = []
    real = ks_consolidate.consolidate_memories
    monkeypatch.setattr(ks_consolidate, "consolidate_memories", lambda *a, **k: trained.append(1) or real(*a, **k))

    def dreamt(first_ks: bool) -> dict:
        KS_NIGHTS.clear()
        if first_ks:
            consolidate_ks(load_base(model_dir)[0], load_base(model_dir)[1], memories, cfg, History())
        model, tokenizer = load_base(model_dir)
        done = consolidate_ks_dream(model, tokenizer, memories, cfg, History(dream=dream))
        return {k: v.clone() for k, v in done.model.state_dict().items()}, done.losses

    alone, alone_losses = dreamt(first_ks=False)
    assert len(trained) == 1
    restored, restored_losses = dreamt(first_ks=True)
    assert len(trained) == 2  # sleep_ks trained the night; sleep_ks_dream restored it
    assert restored_losses == alone_losses
    assert alone.keys() == restored.keys() and all(torch.equal(alone[k], restored[k]) for k in alone)
    KS_NIGHTS.clear()
