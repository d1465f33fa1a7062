"""seed.method = ks (lmsleep.ks.consolidate): context distillation into one new CMS expert, on the tiny model."""

import gc
import json
import math
import weakref
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from tinyworld import CANARY_A, CANARY_Q, memory, tiny_workspace

from lmsleep.config import SeedConfig
from lmsleep.ks import consolidate as ks
from lmsleep.ks import teacher as teacher_side
from lmsleep.ks.rollout import PrefixKV
from lmsleep.ks.samples import replay_samples
from lmsleep.memory import read_jsonl, write_jsonl
from lmsleep.models import load_base, load_lineage
from lmsleep.stages import seed


def ks_params(params, **overrides):
    """KS at test size: tiny_params' KS knobs (one question, one completion per memory, 3 steps), plus overrides."""
    params.seed.method = "ks"
    for key, value in overrides.items():
        setattr(params.seed, key, value)
    return params


@pytest.fixture
def night(tmp_path, tmp_path_factory):
    params, ws = tiny_workspace(tmp_path, tmp_path_factory.getbasetemp() / "tiny-cache-ks")
    memories = [memory(i, probes=[{"question": f"{CANARY_Q} {i}?", "answer": f"{CANARY_A} {i}"}]) for i in range(3)]
    write_jsonl(ws.night_data(params.night.id) / "accepted.jsonl", memories)
    return ks_params(params), ws


def test_ks_night_trains_only_the_new_expert_and_exports_a_peft_adapter(night, monkeypatch):
    params, ws = night
    base_file = ws.base_model("tiny") / "model.safetensors"
    base_before = {k: v.clone() for k, v in load_file(base_file).items()}
    held = {}
    real = ks.consolidate_memories

    def spy(model, tokenizer, memories, cfg, **kwargs):
        held["before"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        cms, losses, stats = real(model, tokenizer, memories, cfg, **kwargs)
        held["cms"] = cms
        return cms, losses, stats

    monkeypatch.setattr(ks, "consolidate_memories", spy)
    summary = seed.run(params, ws)
    assert summary["method"] == "ks" and summary["steps"] == params.seed.ks_steps

    base_after = load_file(base_file)
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)  # on disk
    cms = held["cms"]
    assert all(torch.equal(held["before"][k], v.cpu()) for k, v in cms.base.state_dict().items())  # in memory
    index = cms.active_experts(ks.LEVEL)
    assert index == [0]
    moved = [p for p in cms.expert_parameters(ks.LEVEL, 0)]
    assert moved and all(not p.requires_grad for p in cms.base.parameters())

    out = ws.night_model("n1")
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: every B moved
    assert all(("mlp" in k) for k in adapter)  # only the expert's MLP projections, nothing else

    from peft import PeftModel

    base, tokenizer = load_base(ws.base_model("tiny"))
    device = next(cms.parameters()).device  # where the night ran (a GPU where there is one)
    peft_model = PeftModel.from_pretrained(base, out / "adapter").to(device).eval()
    ids = tokenizer("Captain Orlane steers the ferry", return_tensors="pt")["input_ids"].to(device)
    with torch.no_grad():
        expected = cms(input_ids=ids).logits
        assert torch.allclose(peft_model(input_ids=ids).logits, expected, atol=1e-4)

    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["nights"] == ["n1"] and lineage["adapters"] == ["models/nights/n1/adapter"]
    assert lineage["method"] == "ks"
    merged, _ = load_lineage(ws, lineage)
    with torch.no_grad():
        assert torch.allclose(merged.to(device)(input_ids=ids).logits, expected, atol=1e-4)
    log = json.loads((out / "train_log.json").read_text())
    assert log["summary"]["method"] == "ks" and len(log["losses"]) == params.seed.ks_steps


def test_ks_probes_never_reach_training(night, monkeypatch):
    params, ws = night
    params.seed.ks_alpha = 0.5  # LTI too: its prompts must be clean as well
    seen = []
    real_call = None

    def recording_call(self, text, *args, **kwargs):
        seen.extend(text if isinstance(text, list) else [text])
        return real_call(self, text, *args, **kwargs)

    real = ks.consolidate_memories

    def spy(model, tokenizer, memories, cfg, **kwargs):
        nonlocal real_call
        real_call = type(tokenizer).__call__
        monkeypatch.setattr(type(tokenizer), "__call__", recording_call)
        return real(model, tokenizer, memories, cfg, **kwargs)

    monkeypatch.setattr(ks, "consolidate_memories", spy)
    seed.run(params, ws)
    records = read_jsonl(ws.night_model("n1") / "train_texts.jsonl")
    assert seen and records
    assert {r["kind"] for r in records} >= {"continuation"}
    audit = (ws.night_model("n1") / "train_texts.jsonl").read_text()
    lti = json.loads((ws.night_model("n1") / "train_log.json").read_text())["ks"]
    assert len(lti["lti_rewards"]) == params.seed.ks_steps and all(0.0 <= r <= 1.0 for r in lti["lti_rewards"])
    for text in seen + [audit]:
        assert "canary" not in str(text).lower()


def test_sampling_carries_no_grad_and_teacher_runs_once_per_sample(night, monkeypatch):
    params, ws = night
    params.seed.ks_lambda = 0.5
    params.seed.ks_steps = 4
    grad_during_generate, teacher_rows = [], []
    real_score = teacher_side.score
    from lmsleep.cms.experts import CMSModel

    real_generate = CMSModel.generate

    def generate(self, *args, **kwargs):
        grad_during_generate.append(torch.is_grad_enabled())
        out = real_generate(self, *args, **kwargs)
        assert not out.requires_grad
        return out

    def score(model, samples, *args, **kwargs):
        todo = [s for s in samples if not s.scored]
        n = real_score(model, samples, *args, **kwargs)
        assert n == len(todo) and all(s.scored for s in samples)
        teacher_rows.extend(todo)
        return n

    real_write, real_drop = teacher_side.write_completions, ks.drop_ungrounded

    def write(model, tokenizer, samples, cfg):  # a greedy teacher scores the y it writes as it writes them
        todo = [s for s in samples if not s.completion]
        n = real_write(model, tokenizer, samples, cfg)
        assert n == len(todo) and all(s.scored for s in todo)
        teacher_rows.extend(todo)
        return n

    def drop(samples, *args, **kwargs):  # a dropped prompt is not trained on: not counted as a teacher sample
        kept, dropped = real_drop(samples, *args, **kwargs)
        teacher_rows[:] = [s for s in teacher_rows if s in kept or s not in samples]
        return kept, dropped

    monkeypatch.setattr(CMSModel, "generate", generate)
    monkeypatch.setattr(teacher_side, "score", score)
    monkeypatch.setattr(teacher_side, "write_completions", write)
    monkeypatch.setattr(ks, "drop_ungrounded", drop)
    summary = seed.run(params, ws)
    assert grad_during_generate and not any(grad_during_generate)
    log = json.loads((ws.night_model("n1") / "train_log.json").read_text())
    assert len(teacher_rows) == log["ks"]["teacher_samples"] == len({id(s) for s in teacher_rows})
    # off-policy prompts came back across steps, their teacher pass did not
    assert summary["steps"] * params.seed.batch_size > len(teacher_rows) - log["ks"]["prompts"]


def test_a_cached_teacher_reruns_identically_without_running_the_teacher(night, monkeypatch):
    """ks_teacher_cache: the second run with the same key loads every sample and log-prob, writes no question,
    samples no teacher completion, scores nothing, and trains exactly the same expert."""
    params, ws = night
    params.seed.ks_lambda = 0.0
    params.seed.ks_steps = 4
    first = seed.run(params, ws)
    cache = seed.teacher_cache_dir(ws, "n1")
    files = list(cache.glob("*.safetensors"))
    assert first["teacher_cache"] == "miss" and len(files) == 1
    adapter = load_file(ws.night_model("n1") / "adapter" / "adapter_model.safetensors")
    texts = read_jsonl(ws.night_model("n1") / "train_texts.jsonl")

    import shutil

    shutil.rmtree(ws.night_model("n1"))
    calls = []
    monkeypatch.setattr(ks, "build_samples", lambda *a, **k: calls.append("build") or [])
    monkeypatch.setattr(teacher_side, "sample_completions", lambda *a, **k: calls.append("sample") or [])
    monkeypatch.setattr(teacher_side, "write_scored", lambda *a, **k: calls.append("write") or [])  # greedy teacher
    second = seed.run(params, ws)
    assert second["teacher_cache"] == "hit" and second["teacher_samples"] == 0 and not calls
    again = load_file(ws.night_model("n1") / "adapter" / "adapter_model.safetensors")
    assert again.keys() == adapter.keys() and all(torch.equal(adapter[k], again[k]) for k in adapter)
    assert read_jsonl(ws.night_model("n1") / "train_texts.jsonl") == texts

    shutil.rmtree(ws.night_model("n1"))
    monkeypatch.undo()
    params.seed.ks_prompts_per_memory = 4  # a key field: a new file, the old one kept for its own key
    assert seed.run(params, ws)["teacher_cache"] == "miss" and len(list(cache.glob("*.safetensors"))) == 2


def test_lambda_one_without_cache_writes_no_teacher_completion_up_front(night, monkeypatch):
    params, ws = night
    params.seed.ks_lambda = 1.0
    params.seed.ks_teacher_cache = False
    written = []
    real = teacher_side.write_completions

    def write(model, tokenizer, samples, cfg):
        written.extend(s for s in samples if not s.completion)
        return real(model, tokenizer, samples, cfg)

    monkeypatch.setattr(teacher_side, "write_completions", write)
    summary = seed.run(params, ws)
    assert summary["teacher_cache"] == "off" and not written
    kinds = {r["kind"] for r in read_jsonl(ws.night_model("n1") / "train_texts.jsonl")}
    assert "on-policy" in kinds


@pytest.mark.parametrize("ks_lambda", [0.0, 0.5])
def test_memory_prefixes_are_kept_for_the_loop_only_when_it_scores_on_policy_samples(night, monkeypatch, ks_lambda):
    """The teacher's memory prefixes (46 KB per memory token on SmolLM2) score the up-front samples; a lambda-0 loop
    never scores again, so it must not hold them all night."""
    import inspect

    params, ws = night
    params.seed.ks_lambda = ks_lambda
    params.seed.ks_teacher_cache = False
    params.seed.ks_prompts_per_memory, params.seed.ks_question_share = 3, 0.0  # 3 prompts share each memory's prefix
    up_front, in_loop, alive_while_writing = [], [], []
    real_score, real_loss = teacher_side.score, ks.distillation_loss
    real_per_memory, real_write = teacher_side.score_per_memory, teacher_side.write_completions
    monkeypatch.setattr(teacher_side, "score",
                        lambda *a, **k: (up_front.append(("all", bool(a[5]))), real_score(*a, **k))[1])
    monkeypatch.setattr(teacher_side, "score_per_memory",
                        lambda *a, **k: (up_front.append(("per memory", True)), real_per_memory(*a, **k))[1])
    live = weakref.WeakSet()
    real_init = PrefixKV.__init__
    monkeypatch.setattr(PrefixKV, "__init__", lambda self, *a, **k: (live.add(self), real_init(self, *a, **k))[1])

    def write(*args, **kwargs):
        gc.collect()
        alive_while_writing.append(len(live))
        return real_write(*args, **kwargs)

    monkeypatch.setattr(teacher_side, "write_completions", write)
    signature = inspect.signature(real_loss)

    def loss(*args, **kwargs):
        in_loop.append(bool(signature.bind(*args, **kwargs).arguments.get("prefixes")))
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(ks, "distillation_loss", loss)
    seed.run(params, ws)
    # the night's samples were scored after their memory's prefix: each made just before its memory's rows at
    # lambda 0 (the loop will not need it), all kept for the loop otherwise
    assert up_front[0] == (("all", True) if ks_lambda > 0 else ("per memory", True))
    assert in_loop and all(has == (ks_lambda > 0) for has in in_loop)
    # the teacher writes the night's y up front with no prefix held (at lambda 0.5 the loop's later turns do hold them)
    assert alive_while_writing[0] == 0 and (ks_lambda > 0 or not any(alive_while_writing))


def test_pure_distillation_loss_falls(night):
    params, ws = night
    params.seed.ks_alpha = 1.0
    params.seed.ks_lambda = 0.0  # a fixed teacher set: the loss curve is comparable step to step
    params.seed.ks_teacher_temperature = 0.7  # sampled y: the random tiny model's greedy y is one repeated token
    params.seed.ks_steps = 10
    params.seed.ks_lr = 2e-2
    seed.run(params, ws)
    losses = json.loads((ws.night_model("n1") / "train_log.json").read_text())["losses"]
    per_epoch = params.seed.ks_prompts_per_memory * 3 // params.seed.batch_size  # rough: steps per pass
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first, (per_epoch, losses)


def test_completion_logits_are_the_full_forward_logits_that_predict_y():
    """Prompts of different lengths, right padding, the LM head only at y's positions: the same numbers as slicing
    a full forward of each row alone, with and without a (non-zero) CMS expert acting through its hooks."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmsleep.cms import CMSConfig, LevelSpec, wrap_model
    from lmsleep.ks.rollout import completion_logits

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2)).eval()
    rows = [([1, 2, 3, 4, 5], [7, 8, 9]), ([1, 2], [7, 8, 9, 10])]
    for net in (model, wrap_model(model, CMSConfig(levels=[LevelSpec(name="night", pool_size=1, rank=2)]))):
        if net is not model:
            net.activate_expert("night")
            with torch.no_grad():
                for pool in net.level("night").pools.values():
                    pool.B[0].normal_()
        with torch.no_grad():
            got = completion_logits(net, rows, pad_id=0)
            for (p, y), g in zip(rows, got):
                full = net(input_ids=torch.tensor([p + y])).logits[0]
                assert g.shape == (len(y), 50)
                assert torch.allclose(g, full[len(p) - 1 : len(p) + len(y) - 1], atol=1e-5)


def test_generation_calls_are_capped_by_sequences_and_tokens(monkeypatch):
    """A night of long memories must not put 16 prompts x n samples x a whole passage in one KV cache."""
    from lmsleep.ks import rollout

    rows = [[1] * 10] * 40
    assert rollout._fits([(i, None) for i in range(16)], rows, n=1, max_new_tokens=6)
    assert not rollout._fits([(i, None) for i in range(17)], rows, n=1, max_new_tokens=6)  # 16 sequences
    assert rollout._fits([(i, None) for i in range(5)], rows, n=3, max_new_tokens=6)
    assert not rollout._fits([(i, None) for i in range(6)], rows, n=3, max_new_tokens=6)
    long = [[1] * 200] * 40
    assert rollout._fits([(i, None) for i in range(4096 // (3 * 232))], long, n=3, max_new_tokens=32)
    assert not rollout._fits([(i, None) for i in range(4096 // (3 * 232) + 1)], long, n=3, max_new_tokens=32)
    one, other = SimpleNamespace(tokens=[1] * 150), SimpleNamespace(tokens=[1] * 150)  # two memories' prefixes
    same = [(i, one) for i in range(4)]  # 4 x 3 sequences x (150 + 50 + 32): within the full cap, 4096
    assert rollout._fits(same, long, n=3, max_new_tokens=32)
    assert not rollout._fits(same[:2] + [(2, other), (3, other)], long, n=3, max_new_tokens=32)  # packed: 2048
    assert rollout._fits(same[:1] + [(2, other)], long, n=3, max_new_tokens=32)

    from test_cms import tiny_model

    model = tiny_model("llama")
    widths = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: (widths.append(kw["input_ids"].shape[0]), real(**kw))[1])
    monkeypatch.setattr(rollout, "GENERATION_TOKENS", 3 * 2 * (12 + 3))  # two prompts of 12 tokens, n 3, 3 new
    tokenizer = type("T", (), {"pad_token_id": 2, "eos_token_id": 1, "convert_tokens_to_ids": lambda self, t: None})()
    prompts = [[5 + i] * 12 for i in range(5)]
    out = rollout.sample_completions(model, tokenizer, prompts, temperature=0.7, max_new_tokens=3, n=3)
    assert widths == [2, 2, 1] and len(out) == 15
    widths.clear()  # a prompt over the token cap still gets a call of its own
    assert len(rollout.sample_completions(model, tokenizer, [[5] * 40], temperature=0.7, max_new_tokens=2, n=4)) == 4
    assert widths == [1]


@pytest.mark.parametrize("groups", [None, [0, 0, 1]])
def test_a_row_stops_at_a_stop_token_with_the_tokens_it_would_have_had(groups):
    """sample_completions(stop_ids=...): each row of a generate call is the row sampled without them, cut after its
    first stop token, and the call decodes no further than its longest row needs. A later call draws from where the
    shorter call left the random state: other samples, ended the same way (groups: two calls)."""
    from test_cms import tiny_model

    from lmsleep.ks import rollout

    model = tiny_model("llama")
    tokenizer = type("T", (), {"pad_token_id": 2, "eos_token_id": 1, "convert_tokens_to_ids": lambda self, t: None})()
    prompts = [list(range(40, 60)) + [30], list(range(40, 60)) + [31, 32], [7, 8, 9, 10]]
    steps = []
    hook = model.register_forward_hook(lambda module, args, out: steps.append(1))
    torch.manual_seed(5)
    plain = rollout.sample_completions(model, tokenizer, prompts, 1.5, 12, n=2, groups=groups)
    plain_steps, steps[:] = len(steps), []
    stops = {row[1] for row in plain}  # every row meets a stop token by its second token
    torch.manual_seed(5)
    stopped = rollout.sample_completions(model, tokenizer, prompts, 1.5, 12, n=2, groups=groups, stop_ids=stops)
    hook.remove()
    first_call = len(plain) if groups is None else 4  # group 0: two prompts x n 2
    for full, cut in zip(plain[:first_call], stopped[:first_call]):
        first = next(i for i, t in enumerate(full) if t in stops)
        assert cut == full[: first + 1] and len(cut) <= 2
    for cut in stopped[first_call:]:
        assert not stops & set(cut[:-1]) and (cut[-1] in stops or len(cut) == 12)
    assert len(steps) < plain_steps  # the first call ended when its rows had stopped, not at 12 new tokens


def test_text_stop_ids_are_the_tokens_holding_a_character():
    from lmsleep.ks.rollout import text_stop_ids

    vocab = ["a", "?", "b?", "\n", "?!", "c"]
    decoded = []
    tokenizer = type("T", (), {"__len__": lambda self: len(vocab),
                               "decode": lambda self, ids: (decoded.append(ids), vocab[ids[0]])[1]})()
    assert text_stop_ids(tokenizer, "?") == {1, 2, 4}
    assert text_stop_ids(tokenizer, "?") == {1, 2, 4} and len(decoded) == len(vocab)  # once per tokenizer
    assert text_stop_ids(tokenizer, "?\n") == {1, 2, 3, 4}
    # the cache forgets a tokenizer once nothing else holds it
    import gc
    import weakref

    gone = weakref.ref(tokenizer)
    del tokenizer
    gc.collect()
    assert gone() is None


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_prompts_of_one_memory_are_generated_after_its_prefix_read_once(arch):
    """sample_completions(groups=...): the same greedy completions, the same samples for the same batches and seed,
    while the shared prefix (the memory) goes through the model once per group instead of once per sequence."""
    from test_cms import tiny_model

    from lmsleep.cms import CMSConfig, LevelSpec, wrap_model
    from lmsleep.ks import rollout

    cms = wrap_model(tiny_model(arch), CMSConfig(levels=[LevelSpec(name="night", pool_size=2, rank=2)],
                                                 router="topk", top_k=1))
    index = cms.activate_expert("night")
    with torch.no_grad():  # an active expert that changes outputs: its hooks must act on the prefix pass too
        for pool in cms.level("night").pools.values():
            pool.B[index].normal_()
    tokenizer = type("T", (), {"pad_token_id": 2, "eos_token_id": 1, "convert_tokens_to_ids": lambda self, t: None})()
    memory = list(range(40, 60))  # 20 tokens no other prompt uses
    prompts = [memory + [30, 31, 32], memory + [33], [7, 8, 9, 10], memory + [34, 35]]
    groups = ["m1", "m1", "m2", "m1"]
    greedy = rollout.sample_completions(cms, tokenizer, prompts, 0.0, 6)
    assert rollout.sample_completions(cms, tokenizer, prompts, 0.0, 6, groups=groups) == greedy

    same_memory = [prompts[0], prompts[1], prompts[3]]  # one group: the same batches as without groups
    torch.manual_seed(3)
    plain = rollout.sample_completions(cms, tokenizer, same_memory, 0.9, 6, n=3)
    torch.manual_seed(3)
    shared = rollout.sample_completions(cms, tokenizer, same_memory, 0.9, 6, n=3, groups=[0, 0, 0])
    assert shared == plain and len(shared) == 9

    embedded = []
    hook = cms.base.get_input_embeddings().register_forward_pre_hook(
        lambda module, args: embedded.extend(args[0].flatten().tolist()))
    for kwargs in ({}, {"groups": [0, 0, 0]}):
        embedded.clear()
        rollout.sample_completions(cms, tokenizer, same_memory, 0.9, 1, n=3, **kwargs)  # 1 token: prefill only
        memory_reads = sum(t in memory for t in embedded)
        assert memory_reads == (len(memory) * 9 if not kwargs else len(memory))
    hook.remove()
    with pytest.raises(ValueError, match="group keys"):
        rollout.sample_completions(cms, tokenizer, prompts, 0.0, 2, groups=["m1"])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_rows_of_several_memories_share_one_call_and_answer_as_alone(arch, monkeypatch):
    """Small groups are packed into one generate call (each row after its own memory's cached prefix, left-padded to
    the longest): the greedy completions are those of each prompt generated alone, and the call count drops."""
    from test_cms import tiny_model

    from lmsleep.ks import rollout

    model = tiny_model(arch).eval()
    tokenizer = type("T", (), {"pad_token_id": 2, "eos_token_id": 1, "convert_tokens_to_ids": lambda self, t: None})()
    memories = {"a": list(range(40, 60)), "b": list(range(20, 50)), "c": list(range(10, 28))}  # 20, 30, 18 tokens
    prompts = [memories["a"] + [3, 4], memories["b"] + [5], [7, 8, 9], memories["c"] + [6, 5, 4],
               memories["a"] + [8]]
    groups = ["a", "b", "none", "c", "a"]
    alone = [rollout.sample_completions(model, tokenizer, [p], 0.0, 5)[0] for p in prompts]
    calls = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: (calls.append(kw["input_ids"].shape[0]), real(**kw))[1])
    assert rollout.sample_completions(model, tokenizer, prompts, 0.0, 5, groups=groups) == alone
    assert calls == [3, 1, 1]  # a's two prompts and b's in one call; the prompt without a prefix alone; then c

    short, long = rollout.PrefixKV(model, memories["a"]), rollout.PrefixKV(model, memories["b"])
    keys = rollout.stacked_cache([short, long], 30, n=2).layers[0].keys
    assert keys.shape[0] == 4 and keys.shape[2] == 30
    assert torch.count_nonzero(keys[:2, :, :10]) == 0  # the shorter prefix is left-padded with zeros
    assert torch.equal(keys[:2, :, 10:], short.layers[0][0].expand(2, -1, -1, -1))
    assert torch.equal(keys[2:], long.layers[0][0].expand(2, -1, -1, -1))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_a_greedy_writer_records_the_log_probs_a_scoring_pass_gives(arch):
    """write_scored: the greedy completions of sample_completions, each with the log-probs it was decoded from, equal
    to a scoring pass over prompt + y (completion_logits) up to float rounding: rows of several memories packed in
    one call after their cached prefixes, left-padded, stopped at different lengths, with a CMS expert acting."""
    from test_cms import tiny_model

    from lmsleep.cms import CMSConfig, LevelSpec, wrap_model
    from lmsleep.ks import rollout

    cms = wrap_model(tiny_model(arch), CMSConfig(levels=[LevelSpec(name="night", pool_size=1, rank=2)]))
    index = cms.activate_expert("night")
    with torch.no_grad():
        for pool in cms.level("night").pools.values():
            pool.B[index].normal_()
    tokenizer = type("T", (), {"pad_token_id": 2, "eos_token_id": 1, "convert_tokens_to_ids": lambda self, t: None})()
    memories = {"a": list(range(40, 60)), "b": list(range(20, 50))}
    prompts = [memories["a"] + [3, 4], memories["b"] + [5], memories["a"] + [8], [7, 8, 9]]
    groups = ["a", "b", "a", "none"]
    greedy = rollout.sample_completions(cms, tokenizer, prompts, 0.0, 6, groups=groups)
    for k in (0, 5):
        written = rollout.write_scored(cms, tokenizer, prompts, 6, k, groups=groups)
        assert [y for y, _, _ in written] == greedy
        with torch.no_grad():
            scored = rollout.completion_logits(cms, list(zip(prompts, greedy)), pad_id=2)
        for (y, logprobs, ids), logits in zip(written, scored):
            full = torch.log_softmax(logits.float(), dim=-1)
            if k == 0:
                assert ids is None and logprobs.shape == full.shape
                assert torch.allclose(logprobs, full, atol=1e-4)
            else:
                assert logprobs.shape == ids.shape == (len(y), k)
                assert torch.allclose(logprobs, full.gather(-1, ids), atol=1e-4)
                assert torch.allclose(logprobs, full.topk(k, dim=-1).values, atol=1e-4)
    with pytest.raises(ValueError, match="greedy"):
        rollout._decode(cms, tokenizer, prompts, 0.7, 4, 1, None, (), record_topk=3)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_a_greedy_teacher_is_scored_by_its_writing_and_a_sampled_one_afterwards(temperature):
    """write_completions at ks_teacher_temperature 0 leaves nothing for `score` (the same top-k it would keep); a
    sampled y is left unscored for it (the sampler's warped scores are not the teacher's log-probs)."""
    from test_cms import tiny_model

    from lmsleep.ks.samples import Sample

    model = tiny_model("llama").eval()
    tokenizer = type("T", (), {"pad_token_id": 2, "eos_token_id": 1, "convert_tokens_to_ids": lambda self, t: None})()
    head = list(range(40, 60))

    def batch():
        return [Sample("m1", "question", [1], head + [30, 31], "p", []),
                Sample("m1", "question", [1], head + [9], "p", []),
                Sample("m2", "continuation", [1], [5, 6, 7, 8], "p", [])]

    cfg = SeedConfig(ks_teacher_temperature=temperature, ks_max_new_tokens=5, ks_teacher_topk=4)
    written = batch()
    torch.manual_seed(0)
    assert teacher_side.write_completions(model, tokenizer, written, cfg) == (3 if temperature == 0 else 0)
    assert all(s.completion for s in written)
    rescored = batch()
    for s, w in zip(rescored, written):
        s.completion = list(w.completion)
    assert teacher_side.score(model, rescored, 2, 2, 4) == 3
    assert teacher_side.score(model, written, 2, 2, 4) == (0 if temperature == 0 else 3)
    for a, b in zip(written, rescored):
        assert torch.allclose(a.teacher_logprobs, b.teacher_logprobs, atol=1e-4)
        assert torch.equal(a.teacher_ids, b.teacher_ids)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_checkpointed_layers_give_the_same_gradients_and_recompute_in_backward(arch):
    """ks_activation_checkpointing: the expert's gradients equal the stored-activation ones, every layer's MLP runs
    again in the backward pass (the recompute, so activations were not kept), and the layers are restored after."""
    from test_cms import VOCAB, tiny_model

    from lmsleep.cms import CMSConfig, LevelSpec, wrap_model
    from lmsleep.cms.experts import decoder_layers
    from lmsleep.ks.rollout import checkpointed_layers, completion_logits

    cms = wrap_model(tiny_model(arch, layers=3), CMSConfig(levels=[LevelSpec(name="night", pool_size=2, rank=2)],
                                                          router="topk", top_k=1))
    index = cms.activate_expert("night")
    with torch.no_grad():
        for pool in cms.level("night").pools.values():
            pool.B[index].normal_()
    params = cms.trainable_expert("night", index)
    rows = [([5, 6, 7, 8, 9], [11, 12, 13]), ([5, 6], [11, 12, 13, 14])]
    weights = torch.randn(7, VOCAB, generator=torch.Generator().manual_seed(1))
    calls = []
    # a pre-hook: the recompute stops once the tensors backward needs exist (before an MLP forward hook would run)
    handles = [layer.mlp.register_forward_pre_hook(lambda *a: calls.append(1)) for layer in decoder_layers(cms.base)]

    def grads(checkpointing: bool):
        calls.clear()
        for p in params:
            p.grad = None
        with torch.enable_grad():
            with checkpointed_layers(cms, checkpointing):
                logits = torch.cat(completion_logits(cms, rows, pad_id=0))
            (logits * weights).sum().backward()
        return [p.grad.clone() for p in params], len(calls)

    kept, kept_calls = grads(False)
    recomputed, recomputed_calls = grads(True)
    for h in handles:
        h.remove()
    assert kept_calls == 3 and recomputed_calls == 6
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(kept, recomputed))
    assert any(g.abs().sum() > 0 for g in kept)
    assert all("forward" not in layer.__dict__ for layer in decoder_layers(cms.base))


def test_teacher_top_k_keeps_k_log_probs_per_token_and_the_loss_falls(night):
    params, ws = night
    params.seed.ks_lambda = 0.0
    params.seed.ks_teacher_topk = 5
    params.seed.ks_teacher_cache = False
    params.seed.ks_teacher_temperature = 0.7
    params.seed.ks_steps = 10
    params.seed.ks_lr = 2e-2
    seed.run(params, ws)
    log = json.loads((ws.night_model("n1") / "train_log.json").read_text())
    losses = log["losses"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses


def test_score_keeps_the_teacher_top_k_of_the_full_softmax():
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmsleep.ks.samples import Sample

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2)).eval()
    full, top = (Sample("m", "continuation", [1, 2], [1, 2, 3, 4], "p", [5, 6, 7]) for _ in range(2))
    assert teacher_side.score(model, [full], 0, 4, 0) == 1 and teacher_side.score(model, [top], 0, 4, 3) == 1
    assert teacher_side.score(model, [full, top], 0, 4, 3) == 0  # scored once, never again
    assert full.teacher_logprobs.shape == (3, 40) and full.teacher_ids is None
    assert top.teacher_logprobs.shape == (3, 3) and top.teacher_ids.shape == (3, 3)
    assert torch.allclose(full.teacher_logprobs.exp().sum(-1), torch.ones(3), atol=1e-5)
    expected = full.teacher_logprobs.topk(3, dim=-1)
    assert torch.allclose(top.teacher_logprobs, expected.values) and torch.equal(top.teacher_ids, expected.indices)


def test_scoring_after_the_cached_memory_prefix_equals_scoring_whole_prompts():
    """The teacher's keys/values over a memory's shared prefix, computed once, give the same log-probs as running
    every teacher prompt in full; prompts that do not extend the prefix (another memory) are run in full."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmsleep.ks.samples import Sample

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=60, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1)).eval()
    head = list(range(1, 21))  # 20 shared tokens: "<header> Text: <memory>"

    def batch():
        return [Sample("m1", "continuation", [1], head + [30, 31], "p", [40, 41, 42]),
                Sample("m1", "question", [1], head + [32], "p", [43, 44]),
                Sample("m1", "on-policy", [1], head + [30, 31], "p", [45]),
                Sample("m2", "continuation", [1], [5, 6, 7, 8], "p", [46, 47])]

    plain, cached = batch(), batch()
    prefixes = teacher_side.memory_prefixes(model, cached)
    assert set(prefixes) == {("m1", "memory")} and prefixes[("m1", "memory")].tokens == head
    teacher_side.score(model, plain, 0, 2, 0)
    teacher_side.score(model, cached, 0, 2, 0, prefixes)
    for a, b in zip(plain, cached):
        assert torch.allclose(a.teacher_logprobs, b.teacher_logprobs, atol=1e-5)
    one_at_a_time = batch()
    assert teacher_side.score_per_memory(model, one_at_a_time, 0, 2, 0) == 4
    for a, b in zip(plain, one_at_a_time):
        assert torch.allclose(a.teacher_logprobs, b.teacher_logprobs, atol=1e-5)
    wrong = PrefixKV(model, [7] * 20)
    wrong.tokens = head  # a cache that does not belong to these tokens must change the result: it is really used
    stale = batch()
    teacher_side.score(model, stale, 0, 2, 0, {("m1", "memory"): wrong})
    assert not torch.allclose(stale[0].teacher_logprobs, plain[0].teacher_logprobs, atol=1e-3)


def test_ks_replays_earlier_nights_prompts_with_the_model_as_teacher(night):
    from lmsleep import registry

    params, ws = night
    params.seed.ks_replay_prompts, params.seed.ks_replay_memory_share = 3, 0.0
    seed.run(params, ws)
    first = read_jsonl(ws.night_model("n1") / "train_texts.jsonl")
    # no earlier night: nothing to replay; tonight's memory prompts and the default's anchors only
    assert first and {r["source"] for r in first} == {"memory", "anchor"}
    lineage = json.loads((ws.night_model("n1") / "lineage.json").read_text())
    registry.promote(ws, params.prepare_model, lineage, "n1", {})

    params.night.id = "n2"
    memories = [memory(10 + i, text=f"The lighthouse keeper Brannoc{i} paints the tower blue every spring.",
                       probes=[{"question": f"{CANARY_Q} {i}?", "answer": f"{CANARY_A} {i}"}]) for i in range(2)]
    write_jsonl(ws.night_data("n2") / "accepted.jsonl", memories)
    seed.run(params, ws)
    records = read_jsonl(ws.night_model("n2") / "train_texts.jsonl")
    replayed = [r for r in records if r["source"].startswith("replay:")]
    first_prompts = {r["prompt"] for r in first if r["kind"] in ("continuation", "question")}
    assert 0 < len({r["prompt"] for r in replayed}) <= params.seed.ks_replay_prompts
    assert all(r["source"] == "replay:n1" and r["prompt"] in first_prompts for r in replayed)
    assert any(r["source"] == "memory" for r in records)
    log = json.loads((ws.night_model("n2") / "train_log.json").read_text())
    assert log["ks"]["replay_prompts"] == sum(r["kind"] != "on-policy" for r in replayed)
    assert "canary" not in (ws.night_model("n2") / "train_texts.jsonl").read_text().lower()
    assert json.loads((ws.night_model("n2") / "lineage.json").read_text())["nights"] == ["n1", "n2"]


def test_replay_teacher_sees_no_memory(night):
    params, ws = night
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ws.base_model("tiny"))
    [s] = replay_samples(tokenizer, [{"night": "n0", "kind": "continuation", "prompt": "Continue: a b c",
                                          "memory_id": "m-000"}])
    assert s.student_prompt == s.teacher_prompt and s.source == "replay:n0"


def test_ks_replays_earlier_nights_with_their_memory_read_again(night):
    """seed.ks_replay_memory_share 1: every replayed prompt is trained on the answer its own night's teacher wrote."""
    from lmsleep import registry

    params, ws = night
    params.seed.ks_replay_prompts, params.seed.ks_replay_memory_share = 3, 1.0
    seed.run(params, ws)
    first = read_jsonl(ws.night_model("n1") / "train_texts.jsonl")
    answers = {(r["kind"], r["prompt"]): r["completion"] for r in first}
    registry.promote(ws, params.prepare_model, json.loads((ws.night_model("n1") / "lineage.json").read_text()), "n1",
                     {})
    params.night.id = "n2"
    write_jsonl(ws.night_data("n2") / "accepted.jsonl",
                [memory(10, text="The lighthouse keeper Brannoc paints the tower blue every spring.")])
    seed.run(params, ws)
    replayed = [r for r in read_jsonl(ws.night_model("n2") / "train_texts.jsonl")
                if r["source"] == "replay:n1" and r["kind"] != "on-policy"]
    assert replayed and all(r["completion"] == answers[(r["kind"], r["prompt"])] for r in replayed)
    log = json.loads((ws.night_model("n2") / "train_log.json").read_text())
    assert log["ks"]["replay_read_prompts"] == log["ks"]["replay_prompts"] == len(replayed)


def test_a_replayed_memory_is_read_by_the_teacher_and_twinned(night):
    import random

    from transformers import AutoTokenizer

    from lmsleep.ks.samples import reading_twins

    params, ws = night
    tokenizer = AutoTokenizer.from_pretrained(ws.base_model("tiny"))
    record = {"night": "n0", "kind": "question", "prompt": "Who paints the tower?", "memory_id": "m-9"}
    text = "Brannoc paints the tower blue every spring."
    [read] = replay_samples(tokenizer, [record | {"memory": text, "completion": "Brannoc"}])
    assert text in tokenizer.decode(read.teacher_prompt) and text not in tokenizer.decode(read.student_prompt)
    assert read.completion == tokenizer("Brannoc", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    [twin] = reading_twins([read], 0.0, random.Random(0), replay_share=1.0)
    assert twin.student_prompt == twin.teacher_prompt == read.teacher_prompt and twin.completion == read.completion
    assert reading_twins([read], 1.0, random.Random(0), replay_share=0.0) == []  # tonight's share: not replays
    [kept] = replay_samples(tokenizer, [record])  # no memory: the model as it is answers, nothing to read again
    assert kept.completion == [] and reading_twins([kept], 1.0, random.Random(0), replay_share=1.0) == []
    with pytest.raises(ValueError, match="ks_replay_reading_share"):
        reading_twins([read], 0.0, random.Random(0), replay_share=2.0)


def test_replay_prompts_carry_their_memory_and_answer_only_when_asked(tmp_path, capsys):
    from lmsleep.config import Workspace

    ws = Workspace(tmp_path)
    write_jsonl(ws.night_model("n0") / "train_texts.jsonl", [
        {"memory_id": "m-1", "kind": "question", "source": "memory", "prompt": "Who rows?", "completion": "Ada"},
        {"memory_id": "m-2", "kind": "continuation", "source": "memory", "prompt": "Complete: x", "completion": "x y"}])
    write_jsonl(ws.night_data("n0") / "accepted.jsonl", [{"id": "m-1", "text": "Ada rows to the island."}])
    picked = {p["memory_id"]: p for p in seed.replay_prompts(ws, ["n0"], 5, seed=0, memory_share=1.0)}
    assert picked["m-1"]["memory"] == "Ada rows to the island." and picked["m-1"]["completion"] == "Ada"
    assert "memory" not in picked["m-2"] and "completion" not in picked["m-2"]  # its memory is not on record
    assert "1 of 2 replayed prompts to read again have no memory text" in capsys.readouterr().out
    assert all(set(p) == {"night", "kind", "prompt", "memory_id"} for p in seed.replay_prompts(ws, ["n0"], 5, seed=0))
    with pytest.raises(ValueError, match="ks_replay_memory_share"):
        seed.replay_prompts(ws, ["n0"], 5, seed=0, memory_share=1.5)


def test_a_share_of_the_replayed_prompts_is_read_again(tmp_path):
    from lmsleep.config import Workspace

    ws = Workspace(tmp_path)
    write_jsonl(ws.night_model("n0") / "train_texts.jsonl", [
        {"memory_id": f"m-{i}", "kind": "question", "source": "memory", "prompt": f"Who rows {i}?", "completion": "Ada"}
        for i in range(8)])
    write_jsonl(ws.night_data("n0") / "accepted.jsonl", [{"id": f"m-{i}", "text": f"Ada rows {i}."} for i in range(8)])
    picked = seed.replay_prompts(ws, ["n0"], 6, seed=0, memory_share=0.5)
    assert len(picked) == 6 and sum("memory" in p for p in picked) == 3
    assert [p["prompt"] for p in picked] == [p["prompt"] for p in seed.replay_prompts(ws, ["n0"], 6, seed=0)]


def test_sft_night_texts_become_continuation_replay_prompts(tmp_path):
    from lmsleep.config import Workspace

    ws = Workspace(tmp_path)
    write_jsonl(ws.night_model("n0") / "train_texts.jsonl",
                [{"memory_id": f"m-{i}", "text": f"word{i} alpha beta gamma delta epsilon zeta"} for i in range(5)])
    picked = seed.replay_prompts(ws, ["n0", "missing"], 3, seed=0)
    assert len(picked) == 3 and picked == seed.replay_prompts(ws, ["n0", "missing"], 3, seed=0)
    assert all(p["prompt"].startswith("Continue: word") and p["night"] == "n0" for p in picked)
    assert seed.replay_prompts(ws, ["n0"], 0, seed=0) == []


def test_ks_expert_level_layers_limit_the_adapter(night):
    params, ws = night
    params.seed.ks_expert_level_layers = [0]
    seed.run(params, ws)
    adapter = load_file(ws.night_model("n1") / "adapter" / "adapter_model.safetensors")
    assert adapter and all(".layers.0.mlp." in k for k in adapter)


def test_ks_expert_layer_share_takes_the_top_layers_of_any_depth(night):
    from types import SimpleNamespace as NS

    from lmsleep.ks.consolidate import expert_layers

    def layer():
        module = torch.nn.Module()
        module.mlp = torch.nn.Identity()
        return module

    def model(depth):  # what expert_layers reads: the decoder's layer list, found by its length and `mlp`s
        return NS(config=NS(num_hidden_layers=depth), modules=lambda: [torch.nn.ModuleList(
            [layer() for _ in range(depth)])])

    def layers(depth, share, listed=()):
        return expert_layers(SeedConfig(ks_expert_layer_share=share, ks_expert_level_layers=list(listed)), model(depth))

    assert layers(30, 0.5) == list(range(15, 30)) and layers(2, 0.5) == [1] and layers(3, 0.5) == [1, 2]
    assert layers(30, 1.0) is None and layers(30, 0.01) == [29]
    assert layers(30, 0.5, listed=[0, 3]) == [0, 3]  # listed indices win
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="ks_expert_layer_share must be in"):
            layers(30, bad)
    params, ws = night
    params.seed.ks_expert_layer_share = 0.5  # the tiny model has 2 layers: the top one
    seed.run(params, ws)
    adapter = load_file(ws.night_model("n1") / "adapter" / "adapter_model.safetensors")
    assert adapter and all(".layers.1.mlp." in k for k in adapter)


def test_ks_passes_raise_the_step_count_with_the_nights_prompts(night):
    from lmsleep.ks.consolidate import night_steps

    cfg = SeedConfig(ks_steps=96, batch_size=4)
    assert night_steps(cfg, 160) == 96  # 0 passes: exactly ks_steps
    assert night_steps(SeedConfig(ks_steps=96, batch_size=4, ks_passes=4), 160) == 160
    assert night_steps(SeedConfig(ks_steps=96, batch_size=4, ks_passes=4), 50) == 96  # never fewer than ks_steps
    assert night_steps(SeedConfig(ks_steps=1, batch_size=4, ks_passes=1.5), 7) == 3  # ceil(10.5 / 4)
    # ks_tonight_passes counts tonight's memory prompts only: replay and anchors do not buy a big night more steps
    tonight = SeedConfig(ks_steps=96, batch_size=4, ks_tonight_passes=4)
    assert night_steps(tonight, 300, 140) == 140 and night_steps(tonight, 300, 32) == 96
    assert night_steps(SeedConfig(ks_steps=96, batch_size=4, ks_tonight_passes=4, ks_passes=2), 300, 140) == 150
    params, ws = night
    params.seed.ks_steps, params.seed.ks_passes, params.seed.batch_size = 1, 2, 2
    seed.run(params, ws)
    log = json.loads((ws.night_model("n1") / "train_log.json").read_text())
    prompts = len(read_jsonl(ws.night_model("n1") / "train_texts.jsonl"))  # lambda 0: one row per prompt
    assert len(log["losses"]) == math.ceil(2 * prompts / 2) > 1
    params.seed.ks_passes, params.seed.ks_tonight_passes, params.seed.ks_anchor_prompts = 0, 3, 2
    seed.run(params, ws)
    log = json.loads((ws.night_model("n1") / "train_log.json").read_text())
    texts = read_jsonl(ws.night_model("n1") / "train_texts.jsonl")
    assert sum(t["source"] == "anchor" for t in texts) == 2
    assert len(log["losses"]) == math.ceil(3 * sum(t["source"] == "memory" for t in texts) / 2) > 1


def test_reading_twins_train_tonights_prompts_with_the_memory_on_both_sides(night):
    """A reading twin is an original prompt with the memory in the student's context too: at activation (B = 0) the
    student then equals the teacher on it (zero loss), while the originals, read without the memory, are not."""
    import random

    from lmsleep.ks.samples import reading_twins

    params, ws = night
    cfg = ks_params(params, ks_reading_share=0.5).seed
    model, tokenizer = load_base(ws.base_model("tiny"))
    memories = read_jsonl(ws.night_data(params.night.id) / "accepted.jsonl")
    cms = ks.wrap_model(model, ks.CMSConfig(levels=[ks.LevelSpec(name=ks.LEVEL, pool_size=1, rank=4, alpha=8.0)]))
    index = cms.activate_expert(ks.LEVEL, torch.Generator().manual_seed(0))
    samples, _, _, _, _ = ks._prepare_samples(cms, tokenizer, memories, cfg, ks.LEVEL, index, None, None, None, "")
    originals = [s for s in samples if s.source == "memory"]
    twins = [s for s in samples if s.source == "reading"]
    assert len(twins) == round(0.5 * len(originals)) > 0
    for twin in twins:
        [same] = [s for s in originals if s.teacher_prompt == twin.teacher_prompt and s.completion == twin.completion]
        assert twin.student_prompt == twin.teacher_prompt != same.student_prompt
        assert twin.teacher_logprobs is same.teacher_logprobs  # no extra teacher work
        assert any(m["text"] in tokenizer.decode(twin.student_prompt) for m in memories)

    def loss(batch):
        return float(ks.distillation_loss(cms, tokenizer, batch, cfg, ks.LEVEL, index, random.Random(0), {})[0])

    assert loss(twins) < 1e-5 < loss(originals)
    assert reading_twins(samples, 0.0, random.Random(0)) == []
    with pytest.raises(ValueError, match="ks_reading_share"):
        reading_twins(samples, 1.5, random.Random(0))


def test_ks_night_logs_its_reading_twins(night):
    params, ws = night
    params.seed.ks_reading_share = 1.0
    seed.run(params, ws)
    records = read_jsonl(ws.night_model(params.night.id) / "train_texts.jsonl")
    reading = [r for r in records if r["source"] == "reading"]
    tonight = [r for r in records if r["source"] == "memory"]
    assert len(reading) == len(tonight) > 0
    assert sorted(r["prompt"] for r in reading) == sorted(r["prompt"] for r in tonight)
    log = json.loads((ws.night_model(params.night.id) / "train_log.json").read_text())
    assert log["ks"]["reading_prompts"] == len(reading)
    assert "canary" not in (ws.night_model(params.night.id) / "train_texts.jsonl").read_text().lower()


def test_ks_night_trains_on_its_anchor_prompts(night, tmp_path):
    """seed.ks_anchor_prompts really reaches the night's pool (it once did not: build_samples dropped them)."""
    params, ws = night
    anchors = tmp_path / "anchors.txt"
    anchors.write_text("# comment\nSay hello.\nText:\\nAda keeps a goat.\\n\\nQuestion: What does Ada keep?\n")
    params.seed.ks_anchor_prompts, params.seed.ks_anchor_file = 2, str(anchors)
    seed.run(params, ws)
    records = read_jsonl(ws.night_model(params.night.id) / "train_texts.jsonl")
    trained = sorted(r["prompt"] for r in records if r["source"] == "anchor")
    assert trained == ["Say hello.", "Text:\nAda keeps a goat.\n\nQuestion: What does Ada keep?"]
    log = json.loads((ws.night_model(params.night.id) / "train_log.json").read_text())
    assert log["ks"]["anchor_prompts"] == 2


def test_grounded_only_drops_the_teachers_inventions_before_scoring(night):
    """seed.ks_grounded_only: the same night's memory prompts split into those trained on (no invented name or number
    in y, scored) and those dropped (each with its invented names, never scored); replay and anchors untouched."""
    from lmsleep.ks.samples import ungrounded_names

    params, ws = night
    model, tokenizer = load_base(ws.base_model("tiny"))
    memories = read_jsonl(ws.night_data(params.night.id) / "accepted.jsonl")
    texts = {m["id"]: m["text"] for m in memories}
    cms = ks.wrap_model(model, ks.CMSConfig(levels=[ks.LevelSpec(name=ks.LEVEL, pool_size=1, rank=4, alpha=8.0)]))
    index = cms.activate_expert(ks.LEVEL, torch.Generator().manual_seed(0))

    def prepare(grounded_only):
        torch.manual_seed(0)
        cfg = ks_params(params, ks_grounded_only=grounded_only, ks_prompts_per_memory=6, ks_anchor_prompts=2,
                        ks_teacher_temperature=1.0).seed  # the tiny greedy teacher writes only line breaks
        return ks._prepare_samples(cms, tokenizer, memories, cfg, ks.LEVEL, index, None, ["Say hi."], None, "")

    everything, _, scored_all, _, none = prepare(False)
    kept, _, scored, _, dropped = prepare(True)
    assert none == [] and dropped and [s for s in kept if s.source == "memory"]
    written = {(s.prompt_text, tokenizer.decode(s.completion, skip_special_tokens=True)): s for s in everything}
    tonight = {k for k, s in written.items() if s.source == "memory"}
    kept_rows = {(s.prompt_text, tokenizer.decode(s.completion, skip_special_tokens=True)) for s in kept}
    assert tonight == {k for k in kept_rows if written[k].source == "memory"} | {
        (d["prompt"], d["completion"]) for d in dropped}
    for prompt, y in kept_rows & tonight:
        assert ungrounded_names(y, texts[written[prompt, y].memory_id], prompt) == []
    for d in dropped:
        assert d["ungrounded"] == ungrounded_names(d["completion"], texts[d["memory_id"]], d["prompt"]) != []
    assert [s.prompt_text for s in kept if s.source == "anchor"] == ["Say hi."]
    assert all(s.scored for s in kept) and scored == scored_all - len(dropped)


def test_asked_sentence_only_drops_answers_from_elsewhere_in_the_memory_before_scoring(night):
    """seed.ks_asked_sentence_only (names unchecked): tonight's questions and clozes whose y holds nothing of their
    asked sentence (nor, for a question, of a sentence it matches better) are dropped and say what was asked;
    continuations, replay and anchors are never dropped."""
    from lmsleep.ks.samples import answers_elsewhere

    params, ws = night
    model, tokenizer = load_base(ws.base_model("tiny"))
    memories = read_jsonl(ws.night_data(params.night.id) / "accepted.jsonl")
    cms = ks.wrap_model(model, ks.CMSConfig(levels=[ks.LevelSpec(name=ks.LEVEL, pool_size=1, rank=4, alpha=8.0)]))
    index = cms.activate_expert(ks.LEVEL, torch.Generator().manual_seed(0))

    def prepare(asked_only):
        torch.manual_seed(0)
        cfg = ks_params(params, ks_grounded_only=False, ks_asked_sentence_only=asked_only, ks_prompts_per_memory=6,
                        ks_cloze_share=0.25, ks_anchor_prompts=2, ks_teacher_temperature=1.0).seed
        return ks._prepare_samples(cms, tokenizer, memories, cfg, ks.LEVEL, index, None, ["Say hi."], None, "")

    everything, _, scored_all, _, none = prepare(False)
    kept, _, scored, _, dropped = prepare(True)
    assert none == [] and dropped and all(d["ungrounded"] == [] and d["off_sentence"] for d in dropped)
    assert {d["kind"] for d in dropped} <= {"question", "cloze"}
    decode = lambda s: tokenizer.decode(s.completion, skip_special_tokens=True)  # noqa: E731
    texts = {m["id"]: m["text"] for m in memories}
    for s in kept:  # judged as the night judges them: a question against its whole memory, a cloze by its blank
        memory = texts[s.memory_id] if s.kind == "question" else ""
        assert s.source != "memory" or not answers_elsewhere(decode(s), s.asked, s.prompt_text, memory)
    assert sorted((s.prompt_text, decode(s)) for s in everything) == sorted(
        [(s.prompt_text, decode(s)) for s in kept] + [(d["prompt"], d["completion"]) for d in dropped])
    assert all(s.scored for s in kept) and scored == scored_all - len(dropped)


def test_a_ks_night_lists_what_it_dropped_as_ungrounded(night):
    """The seed stage's log keeps every dropped row with its invented names; none of them reached training."""
    params, ws = night
    params.seed.ks_teacher_temperature = 1.0  # the tiny greedy teacher writes only line breaks: nothing to drop
    params.seed.ks_prompts_per_memory = 6
    # Whether a temperature-1 sample of the random tiny model invents a name depends on the device's random stream
    # (seed 0 does on CPU; on an H200 it did not): the night is rerun with the next seed until one drops something.
    for params.seed.seed in range(4):
        summary = seed.run(params, ws)
        log = json.loads((ws.night_model(params.night.id) / "train_log.json").read_text())
        dropped = log["ks"]["ungrounded_dropped"]
        if dropped:
            break
    assert params.seed.ks_grounded_only and dropped and summary["ungrounded_dropped"] == len(dropped)
    texts = read_jsonl(ws.night_model(params.night.id) / "train_texts.jsonl")
    trained = {(t["prompt"], t["completion"]) for t in texts}
    assert all(d["ungrounded"] and (d["prompt"], d["completion"]) not in trained for d in dropped)


def test_the_benchmarks_fast_memory_settings_train_the_same_night_bit_for_bit(night):
    """`lmsleep bench --memory fast` (harness.FAST_MEMORY: no activation checkpointing, malloc left alone) changes how
    much memory a KS night holds, never what it computes: the same losses and the same expert tensors, exactly."""
    from lmsleep.bench.harness import FAST_MEMORY

    params, ws = night
    params.seed.ks_steps = 4
    params.seed.ks_teacher_cache = False  # each run writes and scores its own teacher side

    def run(**knobs):
        for key, value in knobs.items():
            setattr(params.seed, key, value)
        seed.run(params, ws)
        out = ws.night_model("n1")
        return (json.loads((out / "train_log.json").read_text())["losses"],
                load_file(out / "adapter" / "adapter_model.safetensors"))

    lean_losses, lean_adapter = run(ks_activation_checkpointing=True, ks_return_freed_memory_kb=256)
    fast_losses, fast_adapter = run(**FAST_MEMORY)
    assert FAST_MEMORY == {"ks_activation_checkpointing": False, "ks_return_freed_memory_kb": 0}
    assert len(fast_losses) == 4 and fast_losses == lean_losses
    assert lean_adapter.keys() == fast_adapter.keys()
    assert all(torch.equal(lean_adapter[k], fast_adapter[k]) for k in lean_adapter)
    assert any(v.abs().sum() > 0 for k, v in fast_adapter.items() if "lora_B" in k)  # the night trained


def test_hard_labels_change_the_nights_loss_and_still_train_only_the_new_expert(tmp_path, tmp_path_factory):
    """seed.ks_hard_label_weight: the same night (same prompts, same teacher y) trained with cross-entropy on y mixed
    in has other losses from its first step, and the base weights stay bit-identical on disk."""
    losses = {}
    for weight in (0.0, 1.0):
        params, ws = tiny_workspace(tmp_path / str(weight), tmp_path_factory.getbasetemp() / "tiny-cache-ks")
        write_jsonl(ws.night_data(params.night.id) / "accepted.jsonl", [memory(i) for i in range(3)])
        base_file = ws.base_model("tiny") / "model.safetensors"
        base_before = load_file(base_file)
        seed.run(ks_params(params, ks_hard_label_weight=weight), ws)
        assert all(torch.equal(v, load_file(base_file)[k]) for k, v in base_before.items())
        log = json.loads((ws.night_model(params.night.id) / "train_log.json").read_text())
        losses[weight] = log["losses"]
        assert all(math.isfinite(x) for x in losses[weight])
    assert losses[0.0][0] != pytest.approx(losses[1.0][0])  # cross-entropy on y, not the divergence alone


def test_lr_schedules_start_at_ks_lr_and_fall_towards_zero():
    steps = 96
    for schedule in ("cosine", "linear"):
        factors = [ks.lr_factor(schedule, step, steps) for step in range(steps)]
        assert factors[0] == 1.0 and 0.0 <= factors[-1] < 0.05
        assert all(a > b for a, b in zip(factors, factors[1:]))  # every step smaller than the one before
    assert ks.lr_factor("cosine", steps // 2, steps) == pytest.approx(0.5)
    assert {ks.lr_factor("constant", step, steps) for step in range(steps)} == {1.0}
    with pytest.raises(ValueError, match="ks_lr_schedule must be one of constant, cosine, linear, not 'cosin'"):
        ks.lr_factor("cosin", 0, steps)


def test_a_cosine_night_takes_its_first_step_at_ks_lr_and_smaller_ones_after(night, monkeypatch):
    """The same night (same prompts, teacher, batches) with a constant and a cosine ks_lr: the first step is the same,
    so the loss before the second step is too; the second step is smaller under cosine, so the third loss differs."""
    params, ws = night
    params.seed.ks_steps = 3
    params.seed.ks_lr = 2e-2
    params.seed.ks_teacher_temperature = 0.7  # sampled y: the random tiny model's greedy y is one repeated token
    losses, lrs = {}, {}
    real_step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        lrs.setdefault(params.seed.ks_lr_schedule, []).append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    for schedule in ("constant", "cosine"):
        params.seed.ks_lr_schedule = schedule
        seed.run(params, ws)
        losses[schedule] = json.loads((ws.night_model("n1") / "train_log.json").read_text())["losses"]
    assert lrs["constant"] == [2e-2] * 3
    assert lrs["cosine"] == pytest.approx([2e-2, 2e-2 * 0.75, 2e-2 * 0.25])
    assert losses["cosine"][:2] == losses["constant"][:2]
    assert losses["cosine"][2] != losses["constant"][2]


def test_an_unknown_lr_schedule_fails_before_the_teacher_runs(night, monkeypatch):
    params, ws = night
    params.seed.ks_lr_schedule = "warmup"

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher ran")

    monkeypatch.setattr(teacher_side, "write_completions", no_teacher)
    with pytest.raises(ValueError, match="ks_lr_schedule"):
        seed.run(params, ws)


def test_lr_b_ratio_moves_b_that_many_times_faster_and_a_not_on_the_first_step(night):
    """LoRA+ (seed.ks_lr_b_ratio): B starts at zero, so step one's gradient reaches only B, and AdamW's first step
    moves each element by lr x sign(grad): the same gradient at 4 x the rate moves B exactly 4 x as far."""
    params, ws = night
    memories = read_jsonl(ws.night_data(params.night.id) / "accepted.jsonl")
    moved = {}
    for ratio in (1.0, 4.0):
        cfg = SeedConfig(**{**vars(params.seed), "ks_steps": 1, "ks_lr_b_ratio": ratio})
        model, tokenizer = load_base(ws.base_model("tiny"))
        cms, _, _ = ks.consolidate_memories(model, tokenizer, memories, cfg)
        ups = cms.expert_up_parameters(ks.LEVEL, 0)
        downs = [p for p in cms.expert_parameters(ks.LEVEL, 0) if all(p is not u for u in ups)]
        assert ups and downs and all(u.abs().sum() > 0 for u in ups)
        moved[ratio] = [u.detach().clone() for u in ups], [d.detach().clone() for d in downs]
    (b1, a1), (b4, a4) = moved[1.0], moved[4.0]
    assert all(torch.equal(x, y) for x, y in zip(a1, a4))  # A: no gradient yet, the same kaiming draw in both
    assert all(torch.allclose(y, 4 * x, rtol=1e-3, atol=1e-7) for x, y in zip(b1, b4))


def test_lr_b_ratio_puts_only_b_in_the_faster_group_and_refuses_nonsense():
    a, b = torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(3, 2))
    optimizer = ks.expert_optimizer([a, b], [b], SeedConfig(method="ks", ks_lr=1e-3, ks_lr_b_ratio=16))
    assert [(g["lr"], g["lr_ratio"], len(g["params"])) for g in optimizer.param_groups] == [(1e-3, 1.0, 1),
                                                                                            (1.6e-2, 16.0, 1)]
    assert len(ks.expert_optimizer([a, b], None, SeedConfig(method="ks")).param_groups) == 1
    with pytest.raises(ValueError, match="ks_lr_b_ratio"):
        ks.expert_optimizer([a, b], [b], SeedConfig(method="ks", ks_lr_b_ratio=0))
    with pytest.raises(ValueError, match="among the trained"):
        ks.expert_optimizer([a], [b], SeedConfig(method="ks"))
