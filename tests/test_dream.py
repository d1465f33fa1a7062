"""Dreaming in memory (lmsleep.dream) on the tiny model: novelty, selection, isolated trials, rewards, ReST-EM,
rehearsal, the switches."""

import random
from types import SimpleNamespace

import pytest
import torch
from tinyworld import memory, small_dream, tiny_workspace

from lmsleep.cms import CMSConfig, LevelSpec, export_peft_adapter, import_peft_adapter, wrap_model
from lmsleep.config import DreamConfig, Params
from lmsleep.dream import dream_and_rehearse, find_writer, save_writer
from lmsleep.dream import night as dream_night
from lmsleep.dream.generation import write_dreams
from lmsleep.dream.ledger import Dream
from lmsleep.dream import rehearse as rehearsal
from lmsleep.dream.model import TRIAL, WRITER, DreamModel, with_free_slot
from lmsleep.dream.rest_em import teach_writer
from lmsleep.dream.select import score_dreams, select
from lmsleep.dream.task import TaskItem, build_tasks, tau_loss, tau_value
from lmsleep.dream.trial import reward, train_and_test
from lmsleep.ks import teacher as teacher_side
from lmsleep.ks.samples import encode, messages
from lmsleep.models import load_base
from lmsleep.prompts import question_messages

LEVEL = "night"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    params, ws = tiny_workspace(tmp_path_factory.mktemp("dream-unit"), tmp_path_factory.getbasetemp() / "tiny-dream")
    return ws.base_model("tiny")


@pytest.fixture
def cfg():
    return small_dream(Params()).dream


def tonights_cms(tiny_dir, pool_size=2, dtype=torch.float32):
    """The tiny model as a CMS whose expert 0 is 'tonight's', with a nonzero B so that it acts."""
    model, tokenizer = load_base(tiny_dir)
    model = model.to(dtype)
    cms = wrap_model(model, CMSConfig(levels=[LevelSpec(name=LEVEL, pool_size=pool_size, rank=4, alpha=8.0)]))
    index = cms.activate_expert(LEVEL, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in cms.level(LEVEL).slot_parameters(index):
            if p.dim() == 2 and p.shape[1] == 4:  # B [out, rank]
                p.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(1))
    return cms, tokenizer, index


@pytest.fixture
def dm(tiny_dir, cfg):
    cms, tokenizer, index = tonights_cms(tiny_dir)
    return DreamModel.attach(cms, tokenizer, LEVEL, index, cfg)


def memories(n=2):
    return [memory(i, probes=[{"question": f"ZQXJ-canary {i}?", "answer": f"VWKP-canary {i}"}]) for i in range(n)]


def snapshot(tensors) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in tensors}


def base_tensors(dm):
    return [(n, p) for n, p in dm.cms.base.named_parameters() if "lora_" not in n]


def expert_tensors(dm, index=0):
    return [(str(i), p) for i, p in enumerate(dm.cms.expert_parameters(LEVEL, index))]


def assert_same(before: dict, tensors) -> None:
    now = dict(tensors)
    assert set(now) == set(before)
    changed = [n for n in before if not torch.equal(before[n], now[n])]
    assert not changed, changed


def made_dream(dm, text="Captain Orlane Vesk0 steers the ferry Quillmoth number 0 across the river.", mid="m-000"):
    """A well-formed continuation dream with real token ids (no writer needed)."""
    tok = dm.tokenizer
    instruction, completion = "Continue: Captain Orlane", text.split(" ", 2)[2]
    d = Dream(f"{mid}/x", mid, 0, "continuation", instruction, completion, False, False,
              [(instruction, completion)])
    d.student_ids = encode(tok, messages(instruction, None))
    d.completion_ids = list(tok(completion, add_special_tokens=False)["input_ids"])
    d.writer_ids = [(encode(tok, messages(instruction, text)), d.completion_ids)]
    return d


def recall_task(dm, mid="m-000"):
    tok = dm.tokenizer
    prompt, answer = "Continue: Captain Orlane Vesk0 steers", "the ferry Quillmoth number 0"
    return {mid: [TaskItem(mid, "recall", prompt, answer, encode(tok, messages(prompt, None)),
                           list(tok(answer, add_special_tokens=False)["input_ids"]))]}


# ---------------------------------------------------------------- novelty


def test_random_expert_changes_the_active_set_only_while_dreams_are_written(tiny_dir, cfg, monkeypatch):
    phase = ["other"]

    def in_phase(name, real):
        def marked(*args, **kwargs):
            phase[0] = name
            try:
                return real(*args, **kwargs)
            finally:
                phase[0] = "other"
        return marked

    monkeypatch.setattr(dream_night, "write_dreams", in_phase("write", dream_night.write_dreams))
    monkeypatch.setattr(dream_night, "guard_night", in_phase("guard", dream_night.guard_night))
    for novelty in (True, False):
        cfg.random_expert = novelty
        cms, tokenizer, index = tonights_cms(tiny_dir)
        seen = []
        cms.base.register_forward_pre_hook(lambda m, a: seen.append((phase[0], tuple(cms.level(LEVEL).active))))
        result = dream_and_rehearse(cms, tokenizer, memories(), Params().seed, cfg, expert_index=index)
        during = {active for where, active in seen if where == "write"}
        outside = {active for where, active in seen if where == "other"}
        assert during == ({(0, 1)} if novelty else {(0,)})
        assert outside == {(0,)}  # tau, selection, trials, ReST-EM, rehearsal: tonight's expert alone
        # the drift guard after rehearsal (seed.ks_drift_budget on by default) measures with and without it
        assert {active for where, active in seen if where == "guard"} == {(), (0,)}
        assert result.cms.active_experts(LEVEL) == [0]
        assert all(not p.any() for p in result.cms.expert_parameters(LEVEL, 1))  # the random slot left nothing
        assert all(d.novelty is novelty for d in result.dreams)


def test_the_random_expert_perturbs_the_model_and_differs_per_generator(dm):
    ids = torch.tensor([dm.tokenizer("the ferry crosses the river")["input_ids"]])
    with dm.use(None), torch.no_grad():
        plain = dm.cms(input_ids=ids).logits
        outs = []
        for seed in (1, 2):
            with dm.novelty(True, 0.05, torch.Generator().manual_seed(seed)):
                outs.append(dm.cms(input_ids=ids).logits)
        assert torch.equal(dm.cms(input_ids=ids).logits, plain)
    assert not torch.allclose(outs[0], plain) and not torch.allclose(outs[0], outs[1])


def test_with_free_slot_rewraps_a_full_level_bit_for_bit(tiny_dir):
    cms, tokenizer, index = tonights_cms(tiny_dir, pool_size=1)
    ids = torch.tensor([tokenizer("the ferry crosses the river")["input_ids"]])
    with torch.no_grad():
        before = cms(input_ids=ids).logits
        grown = with_free_slot(cms)
        assert grown is not cms and grown.level(LEVEL).spec.pool_size == 2
        assert grown.active_experts(LEVEL) == [index] and torch.equal(grown(input_ids=ids).logits, before)
        assert with_free_slot(grown) is grown


def test_import_peft_adapter_is_the_inverse_of_export(tiny_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    cms, tokenizer, _ = tonights_cms(tiny_dir)
    ids = torch.tensor([tokenizer("the ferry crosses the river")["input_ids"]])
    with torch.no_grad():
        expected = cms(input_ids=ids).logits
    export_peft_adapter(cms, tmp_path / "adapter")
    base, _ = load_base(tiny_dir)
    back, index = import_peft_adapter(base, tmp_path / "adapter", LEVEL, pool_size=2)
    with torch.no_grad():
        assert torch.allclose(back(input_ids=ids).logits, expected, atol=1e-5)
    assert back.level(LEVEL).spec.pool_size == 2 and back.active_experts(LEVEL) == [index]
    fresh, _ = load_base(tiny_dir)
    with torch.no_grad():
        peft_logits = PeftModel.from_pretrained(fresh, tmp_path / "adapter")(input_ids=ids).logits
    assert torch.allclose(peft_logits, expected, atol=1e-5)

    other, _ = load_base(tiny_dir)
    get_peft_model(other, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "sft")
    with pytest.raises(ValueError):
        import_peft_adapter(load_base(tiny_dir)[0], tmp_path / "sft", LEVEL)


# ---------------------------------------------------------------- selection


def scored_dreams(n_memories=3, per_memory=6, rng=None):
    rng = rng or random.Random(0)
    dreams = []
    for m in range(n_memories):
        for j in range(per_memory):
            d = Dream(f"m{m}/d{j}", f"m{m}", 0, "qa", "q?", "a", True, True)
            if j == 0:
                d.malformed = "no question"
            else:
                d.score = rng.uniform(-1, 1)
            dreams.append(d)
    return dreams


def test_selection_keeps_exactly_top_k_plus_b_per_memory(cfg):
    cfg.top_k, cfg.random_b, cfg.max_trials = 2, 2, 100
    dreams = scored_dreams()
    order = select(dreams, cfg, random.Random(0))
    assert len(order) == 3 * (2 + 2)
    for m in range(3):
        mine = [d for d in dreams if d.memory_id == f"m{m}"]
        kept = [d for d in mine if d.kept]
        assert len(kept) == 4 and all(d.malformed is None for d in kept)
        best = sorted((d for d in mine if d.score is not None), key=lambda d: d.score, reverse=True)
        assert {d.id for d in mine if d.kept == "top-k"} == {d.id for d in best[:2]}
        assert all(d.kept == "random" for d in mine if d.kept and d not in best[:2])
    assert [d.memory_id for d in order[:3]] == ["m0", "m1", "m2"] and all(d.kept == "top-k" for d in order[:3])

    cfg.max_trials = 5
    assert len(select(scored_dreams(), cfg, random.Random(0))) == 5
    cfg.top_k, cfg.random_b, cfg.max_trials = 4, 4, 100  # fewer scored dreams than k + b: all of them, no more
    assert len(select(scored_dreams(per_memory=3), cfg, random.Random(0))) == 3 * 2


def test_random_top_k_ablation_takes_no_gradient(dm, cfg, monkeypatch):
    cfg.grad_selection = False
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: pytest.fail("random top-k took a gradient"))
    dreams = [made_dream(dm) for _ in range(4)]
    score_dreams(dm, dreams, recall_task(dm), cfg, random.Random(0))
    assert all(0.0 <= d.score < 1.0 for d in dreams) and len({d.score for d in dreams}) == 4


def test_gradient_score_is_the_first_order_change_of_tau_loss(tiny_dir, cfg):
    """score = <g_dream, g_tau> on tonight's expert: a step -eps g_dream changes tau's loss by -eps * score."""
    cms, tokenizer, index = tonights_cms(tiny_dir, dtype=torch.float64)
    dm = DreamModel.attach(cms, tokenizer, LEVEL, index, cfg)
    d, tasks = made_dream(dm), recall_task(dm)
    score_dreams(dm, [d], tasks, cfg, random.Random(0))
    params = dm.cms.expert_parameters(LEVEL, index)
    with dm.use(None):
        for p in params:
            p.requires_grad_(True)
        from lmsleep.dream.model import completion_nll

        grads = torch.autograd.grad(completion_nll(dm.cms, [(d.student_ids, d.completion_ids)], dm.pad_id())[0],
                                    params, allow_unused=True)
        before = float(tau_loss(dm, tasks["m-000"]).detach())
        eps = 1e-6 / max(abs(d.score), 1e-12)
        with torch.no_grad():
            for p, g in zip(params, grads):
                if g is not None:
                    p -= eps * g
        after = float(tau_loss(dm, tasks["m-000"]).detach())
    assert d.score != 0.0
    assert after - before == pytest.approx(-eps * d.score, rel=0.05)


# ---------------------------------------------------------------- train and test


def test_isolated_copies_never_modify_the_base_the_expert_or_the_writer(dm, cfg):
    cfg.trial_steps, cfg.trial_lr = 2, 5e-2
    with torch.no_grad():  # a writer that is not all zeros, so "unchanged" means something
        for p in dm.adapter_parameters(WRITER).values():
            p.add_(0.01)
    base, expert = snapshot(base_tensors(dm)), snapshot(expert_tensors(dm))
    writer = snapshot(dm.adapter_parameters(WRITER).items())
    tasks = recall_task(dm)
    with dm.use(None):
        tau_before = {"m-000": tau_value(dm, tasks["m-000"], cfg)}
    dreams = [made_dream(dm), made_dream(dm)]
    train_and_test(dm, dreams, tasks, tau_before, cfg)
    assert_same(base, base_tensors(dm))
    assert_same(expert, expert_tensors(dm))
    assert_same(writer, dm.adapter_parameters(WRITER).items())
    assert_same(dm.trial_init, dm.adapter_parameters(TRIAL).items())  # the copy is gone again
    assert dm.active is None
    assert all(d.tested and d.tau_after != d.tau_before for d in dreams)  # each copy did train
    assert dreams[0].tau_after == pytest.approx(dreams[1].tau_after)  # same dream, same start: an isolated copy


def test_a_reward_is_one_only_when_tau_rose(dm, cfg, monkeypatch):
    assert reward(-2.0, -1.5) == 1 and reward(-2.0, -2.0) == 0 and reward(-2.0, -2.5) == 0
    assert reward(0.25, 0.5, margin=0.3) == 0 and reward(0.25, 0.6, margin=0.3) == 1
    assert reward(0.25, 0.25, margin=-0.1) == 1  # a negative margin is a tolerance, by choice
    after = iter([-1.0, -3.0, -2.0])
    monkeypatch.setattr("lmsleep.dream.trial.tau_value", lambda *a, **k: next(after))
    cfg.trial_steps, cfg.reward_margin = 1, 0.0
    dreams = [made_dream(dm) for _ in range(3)]
    train_and_test(dm, dreams, recall_task(dm), {"m-000": -2.0}, cfg)
    assert [d.reward for d in dreams] == [1, 0, 0]
    assert [(d.tau_before, d.tau_after) for d in dreams] == [(-2.0, -1.0), (-2.0, -3.0), (-2.0, -2.0)]


# ---------------------------------------------------------------- ReST-EM


def test_rest_em_changes_only_the_writer(dm, cfg):
    cfg.writer_steps, cfg.writer_lr = 3, 1e-2
    rewarded, refused = made_dream(dm), made_dream(dm)
    rewarded.reward, refused.reward = 1, 0
    base, expert = snapshot(base_tensors(dm)), snapshot(expert_tensors(dm))
    trial, writer = snapshot(dm.adapter_parameters(TRIAL).items()), snapshot(dm.adapter_parameters(WRITER).items())
    losses = teach_writer(dm, [rewarded, refused], cfg, random.Random(0))
    assert len(losses) == 3
    now = dm.adapter_parameters(WRITER)
    assert all(not torch.equal(writer[n], now[n]) for n in writer)  # every writer tensor moved (A and B)
    assert_same(base, base_tensors(dm))
    assert_same(expert, expert_tensors(dm))
    assert_same(trial, dm.adapter_parameters(TRIAL).items())
    assert rewarded.taught_writer and not refused.taught_writer
    assert teach_writer(dm, [refused], cfg, random.Random(0)) == []  # nothing rewarded: nothing to learn


def test_the_writer_is_saved_found_and_continued(dm, cfg, tiny_dir, tmp_path):
    from lmsleep.config import Workspace

    with torch.no_grad():
        for p in dm.adapter_parameters(WRITER).values():
            p.add_(0.02)
    ws = Workspace(tmp_path)
    folder = save_writer(ws.night_dream("n1") / "writer", dm.writer_state(), {"night": "n1"})
    assert find_writer(ws, ["n0", "n1", "n2"]) == folder and find_writer(ws, ["n0"]) is None
    cms, tokenizer, index = tonights_cms(tiny_dir)
    again = DreamModel.attach(cms, tokenizer, LEVEL, index, cfg, writer=folder)
    assert again.writer_source == str(folder)
    loaded = again.adapter_parameters(WRITER)
    assert all(torch.equal(p, loaded[n]) for n, p in dm.adapter_parameters(WRITER).items())


# ---------------------------------------------------------------- tau, writing, the whole night


def test_tau_comes_from_the_memory_and_the_model_never_from_probes(dm, cfg):
    cfg.tau_min_agreement = 2.0  # no question can be kept: every memory falls back to recall from its own text
    mems = memories(3)
    tasks = build_tasks(dm, mems, cfg, random.Random(0))
    assert sorted(tasks) == ["m-000", "m-001", "m-002"]
    for m in mems:
        [item] = tasks[m["id"]]
        assert item.kind == "recall" and item.answer in m["text"] and "canary" not in item.prompt + item.answer
    cfg.tau_metric = "accuracy"
    with dm.use(None):
        assert 0.0 <= tau_value(dm, tasks["m-000"], cfg) <= 1.0


def test_dreams_cycle_kinds_and_record_what_the_writer_wrote(dm, cfg):
    cfg.kinds, cfg.dreams_per_memory, cfg.max_new_tokens = ["qa", "restatement", "implication", "continuation"], 4, 16
    dreams = write_dreams(dm, memories(2), cfg, 0, random.Random(0))
    assert len(dreams) == 8 and len({d.id for d in dreams}) == 8
    for mid in ("m-000", "m-001"):
        assert sorted(d.kind for d in dreams if d.memory_id == mid) == sorted(cfg.kinds)
    for d in dreams:
        assert d.writer_turns and d.writer_ids and len(d.writer_turns) == len(d.writer_ids)
        if d.malformed is None:
            assert d.student_ids and d.completion_ids and d.instruction
    assert dm.active is None and dm.cms.active_experts(LEVEL) == [0]


def test_the_whole_dreaming_rehearses_only_tonights_expert(tiny_dir, cfg):
    cms, tokenizer, index = tonights_cms(tiny_dir, pool_size=1)  # as consolidate_memories leaves it: no free slot
    base = snapshot((n, p) for n, p in cms.base.named_parameters())
    expert = [p.detach().clone() for p in cms.expert_parameters(LEVEL, index)]
    result = dream_and_rehearse(cms, tokenizer, memories(), Params().seed, cfg, expert_index=index)
    assert result.cms is not cms and result.cms.active_experts(LEVEL) == [index]
    assert result.rehearsed and len(result.rehearsal_losses) == cfg.rehearsal_steps
    assert_same(base, result.cms.base.named_parameters())  # peft is gone, the base never moved
    assert any(not torch.equal(a, b) for a, b in zip(expert, result.cms.expert_parameters(LEVEL, index)))
    used = [d for d in result.dreams if d.used]
    assert used and all(d.reward == 1 and d.tested and d.kept for d in used)
    assert {r["use"] for r in result.audit} >= {"trial", "rehearsal"}
    assert result.stats["made"] == len(result.dreams) == 2 * cfg.dreams_per_memory
    assert result.writer is not None and result.writer.tensors
    assert result.stats["writer_from"] == "fresh"
    cms, tokenizer, index = tonights_cms(tiny_dir, pool_size=1)  # the next night, handed tonight's writer
    carried = dream_and_rehearse(cms, tokenizer, memories(), Params().seed, cfg, expert_index=index,
                                 writer=result.writer)
    assert carried.stats["writer_from"] == carried.writer.source == "carried in memory (first: fresh)"


def test_no_dreaming_switch_changes_nothing(tiny_dir, cfg):
    cfg.enabled = False
    cms, tokenizer, index = tonights_cms(tiny_dir, pool_size=1)
    result = dream_and_rehearse(cms, tokenizer, memories(), Params().seed, cfg, expert_index=index)
    assert result.cms is cms and result.dreams == [] and not result.rehearsed and result.stats["enabled"] is False


def test_no_rest_em_switch_leaves_the_writer_as_it_came(tiny_dir, cfg, monkeypatch):
    cfg.rest_em, cfg.rest_em_rounds = False, 3
    monkeypatch.setattr(dream_night, "teach_writer", lambda *a, **k: pytest.fail("ReST-EM ran with rest_em off"))
    cms, tokenizer, index = tonights_cms(tiny_dir)
    result = dream_and_rehearse(cms, tokenizer, memories(), Params().seed, cfg, expert_index=index)
    assert result.stats["rounds"] == 1 and not any(d.taught_writer for d in result.dreams)
    assert all(not v.any() for k, v in result.writer.tensors.items() if "lora_B" in k)  # still the fresh writer


# ---------------------------------------------------------------- rehearsal mixed with tonight's prompts


def night_rows(mid="m-000"):
    """Rows as the seed night writes them to train_texts.jsonl (Sample.audit), of every source and kind."""
    row = lambda kind, prompt, source="memory", memory_id=mid: {  # noqa: E731
        "memory_id": memory_id, "kind": kind, "source": source, "prompt": prompt, "completion": "the ferry"}
    return [row("question", "Who steers the ferry Quillmoth?"),
            row("continuation", "Complete this sentence from the text: Captain Orlane"),
            row("cloze", "Fill in the blank (___) with the missing words: Captain ___ steers the ferry."),
            row("on-policy", "Who steers the ferry Quillmoth?"),
            row("question", "Who was here before?", source="replay:n0"),
            row("anchor", "Write a haiku.", source="anchor", memory_id=""),
            row("continuation", "Complete this sentence from the text: The lamp", memory_id="m-999")]


def test_night_samples_rebuild_tonights_memory_prompts_only(tiny_dir):
    _, tokenizer = load_base(tiny_dir)
    mems = memories(1)
    samples = rehearsal.night_samples(tokenizer, night_rows(), mems)
    assert [(s.kind, s.prompt_text) for s in samples] == [(r["kind"], r["prompt"]) for r in night_rows()[:3]]
    question, continuation = samples[0], samples[1]
    assert question.student_prompt == encode(tokenizer, question_messages("Who steers the ferry Quillmoth?"))
    assert question.teacher_prompt == encode(tokenizer, question_messages("Who steers the ferry Quillmoth?",
                                                                          mems[0]["text"]))
    assert continuation.teacher_prompt == encode(tokenizer, messages(continuation.prompt_text, mems[0]["text"]))
    assert all(s.completion == [] and s.source == "memory" for s in samples)  # y: the teacher writes it again


def test_night_rows_per_batch():
    assert [rehearsal.night_rows_per_batch(4, share) for share in (0.0, 0.1, 0.5, 0.75, 0.99)] == [0, 1, 2, 3, 3]
    assert rehearsal.night_rows_per_batch(1, 0.5) == 0  # a batch of one is the dream's
    with pytest.raises(ValueError, match="rehearsal_night_share"):
        DreamConfig(rehearsal_night_share=1.0)


def one_rewarded_dream(tokenizer) -> list[Dream]:
    dream = made_dream(SimpleNamespace(tokenizer=tokenizer))
    dream.reward = 1
    return [dream]


def recording_batches(monkeypatch) -> list[list[str]]:
    """The kinds of every rehearsal batch, in step order (the real loss still runs)."""
    batches, real_loss = [], rehearsal.distillation_loss

    def spy_loss(cms, tokenizer, batch, *args, **kwargs):
        batches.append([s.kind for s in batch])
        return real_loss(cms, tokenizer, batch, *args, **kwargs)

    monkeypatch.setattr(rehearsal, "distillation_loss", spy_loss)
    return batches


def test_rehearsal_mixes_tonights_prompts_into_every_batch(tiny_dir, cfg, monkeypatch):
    cms, tokenizer, index = tonights_cms(tiny_dir, pool_size=1)
    dreams = one_rewarded_dream(tokenizer)
    seed_cfg = Params().seed
    seed_cfg.batch_size, seed_cfg.ks_max_new_tokens = 4, 6
    cfg.rehearsal_steps, cfg.rehearsal_night_share = 3, 0.5
    batches, written = recording_batches(monkeypatch), []
    real_write = teacher_side.write_completions

    def spy_write(teacher, tok, samples, cfg_):
        written.append((list(cms.active_experts(LEVEL)), [s.prompt_text for s in samples if not s.completion]))
        return real_write(teacher, tok, samples, cfg_)

    monkeypatch.setattr(teacher_side, "write_completions", spy_write)
    base = snapshot((n, p) for n, p in cms.base.named_parameters())
    expert = [p.detach().clone() for p in cms.expert_parameters(LEVEL, index)]
    losses, audit = rehearsal.rehearse(cms, tokenizer, dreams, memories(1), seed_cfg, cfg, LEVEL, index, night_rows())
    assert len(losses) == 3 and dreams[0].used
    # the one dream (a draw takes at most its pool) and 2 of tonight's prompts: round(0.5 x 4)
    assert batches and all(b.count("dream:continuation") == 1 and len(b) == 3 for b in batches)
    night_kinds = [k for b in batches for k in b if not k.startswith("dream:")]
    assert len(night_kinds) == 6 and set(night_kinds) <= {"question", "continuation", "cloze"}
    assert written[0][0] == [] and len(written[0][1]) == 3  # tonight's expert off; only the 3 night prompts written
    assert {r["kind"] for r in audit} >= {"dream:continuation", "question", "continuation", "cloze"}
    assert_same(base, cms.base.named_parameters())
    assert any(not torch.equal(a, b) for a, b in zip(expert, cms.expert_parameters(LEVEL, index)))


def test_rehearsal_without_a_night_share_sees_only_dreams(tiny_dir, cfg, monkeypatch):
    cms, tokenizer, index = tonights_cms(tiny_dir, pool_size=1)
    dreams = one_rewarded_dream(tokenizer)
    batches = recording_batches(monkeypatch)
    cfg.rehearsal_steps = 2
    rehearsal.rehearse(cms, tokenizer, dreams, memories(1), Params().seed, cfg, LEVEL, index, night_rows())
    assert batches and all(set(b) == {"dream:continuation"} for b in batches)
