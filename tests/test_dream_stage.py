"""The dream stage (lmsleep.stages.dream) on tiny nights: outputs, lineages, the probe-leak audit, the writer's
versions across nights."""

import json

import pytest
import torch
from safetensors.torch import load_file
from tinyworld import CANARY_A, CANARY_Q, gold_reading_targets, memory, tiny_workspace

from lmsleep import registry
from lmsleep.config import DreamConfig
from lmsleep.ks import drift_guard
from lmsleep.memory import read_json, read_jsonl, write_jsonl
from lmsleep.models import load_lineage
from lmsleep.stages import dream, seed


def canary_memories(start=0, n=3):
    return [memory(start + i, probes=[{"question": f"{CANARY_Q} {i}?", "answer": f"{CANARY_A} {i}"}])
            for i in range(n)]


@pytest.fixture
def night(tmp_path, tmp_path_factory):
    params, ws = tiny_workspace(tmp_path, tmp_path_factory.getbasetemp() / "tiny-cache-dream-stage")
    write_jsonl(ws.night_data("n1") / "accepted.jsonl", canary_memories())
    params.seed.ks_steps = 2  # the other KS knobs at test size come from tiny_params
    return params, ws


def test_disabled_dreaming_is_a_recorded_passthrough(night):
    params, ws = night
    seed.run(params, ws)
    assert ws.challenger_lineage("n1") == ws.night_model("n1") / "lineage.json"  # before dreaming: seed's
    params.dream.enabled = DreamConfig().enabled  # the shipped default (docs/results.md: dreaming has not paid yet)
    assert params.dream.enabled is False
    summary = dream.run(params, ws)
    assert summary["enabled"] is False and summary["rehearsed"] is False
    out = ws.night_dream("n1")
    lineage = read_json(out / "lineage.json")
    assert {k: v for k, v in lineage.items() if k != "dream"} == read_json(ws.night_model("n1") / "lineage.json")
    assert lineage["dream"]["rehearsed"] is False and "enabled is false" in lineage["dream"]["reason"]
    assert read_jsonl(out / "ledger.jsonl") == [] and read_json(out / "dream_log.json")["summary"] == summary
    assert ws.challenger_lineage("n1") == out / "lineage.json"
    assert not (out / "adapter").exists() and not (out / "writer").exists()


def test_ks_night_rehearses_tonights_expert_and_no_probe_reaches_training(night, monkeypatch):
    params, ws = night
    params.seed.method = "ks"
    params.dream.rehearsal_night_share = 0.5  # tonight's own prompts join rehearsal: read from seed's train_texts
    seed.run(params, ws)
    seen = []
    for name in ("__call__", "apply_chat_template"):  # every text the dream stage tokenizes or renders
        real = getattr(type_of_tokenizer(ws), name)

        def recording(self, text, *args, _real=real, **kwargs):
            seen.append(json.dumps(text) if not isinstance(text, str) else text)
            return _real(self, text, *args, **kwargs)

        monkeypatch.setattr(type_of_tokenizer(ws), name, recording)
    summary = dream.run(params, ws)
    assert summary["seed_method"] == "ks" and summary["rehearsed"] is True and summary["used"] > 0

    out = ws.night_dream("n1")
    lineage = read_json(out / "lineage.json")
    assert lineage["adapters"] == ["models/nights/n1/dream/adapter"]  # tonight's seed adapter, replaced
    assert lineage["dream"]["seed_adapter"] == "models/nights/n1/adapter" and lineage["nights"] == ["n1"]
    assert lineage["parent"] == read_json(ws.night_model("n1") / "lineage.json")["parent"]
    seeded = load_file(ws.night_model("n1") / "adapter" / "adapter_model.safetensors")
    rehearsed = load_file(out / "adapter" / "adapter_model.safetensors")
    assert set(rehearsed) == set(seeded)  # the same expert, same format
    assert any(not torch.equal(seeded[k], rehearsed[k]) for k in seeded)  # ... trained further on the dreams
    load_lineage(ws, lineage)  # what evaluate and promote load
    assert ws.challenger_lineage("n1") == out / "lineage.json"

    ledger = read_jsonl(out / "ledger.jsonl")
    assert len(ledger) == summary["made"] == 3 * params.dream.dreams_per_memory
    assert sum(r["used"] for r in ledger) == summary["used"] and all(r["reward"] == 1 for r in ledger if r["used"])
    audit = read_jsonl(out / "train_texts.jsonl")
    assert {r["use"] for r in audit} == {"trial", "writer", "rehearsal"}
    seed_prompts = {r["prompt"] for r in read_jsonl(ws.night_model("n1") / "train_texts.jsonl")}
    mixed = [r for r in audit if r["use"] == "rehearsal" and not r["kind"].startswith("dream:")]
    assert mixed and {r["prompt"] for r in mixed if r["kind"] != "on-policy"} <= seed_prompts
    assert seen  # the spy saw the stage's tokenizer at work
    for text in seen + [(out / name).read_text() for name in ("train_texts.jsonl", "ledger.jsonl", "tau.jsonl")]:
        assert "canary" not in text.lower()
    writer = read_json(out / "writer" / "writer.json")
    assert writer["continued_from"] == "fresh" and writer["trained"] is True


def type_of_tokenizer(ws):
    from transformers import AutoTokenizer

    return type(AutoTokenizer.from_pretrained(ws.base_model("tiny")))


def test_sft_night_dreams_into_a_new_expert_after_tonights_lora(night):
    params, ws = night
    params.seed.method = "sft"  # tonight's adapter is a LoRA on every linear layer
    seed.run(params, ws)
    summary = dream.run(params, ws)
    assert summary["seed_method"] == "sft" and summary["rehearsed"] is True
    lineage = read_json(ws.night_dream("n1") / "lineage.json")
    assert lineage["adapters"] == ["models/nights/n1/adapter", "models/nights/n1/dream/adapter"]
    adapter = load_file(ws.night_dream("n1") / "adapter" / "adapter_model.safetensors")
    assert adapter and all(".mlp." in k for k in adapter)  # a CMS expert: MLP projections only
    load_lineage(ws, lineage)


def test_the_next_night_continues_the_champions_writer(night):
    params, ws = night
    params.seed.method = "sft"  # each night: a LoRA, then its dream adapter (a KS night rehearses its own expert)
    seed.run(params, ws)
    dream.run(params, ws)
    registry.promote(ws, params.prepare_model, read_json(ws.challenger_lineage("n1")), "n1", {})
    params.night.id = "n2"
    write_jsonl(ws.night_data("n2") / "accepted.jsonl", canary_memories(start=10, n=2))
    seed.run(params, ws)
    summary = dream.run(params, ws)
    assert summary["writer_from"] == "models/nights/n1/dream/writer"
    assert read_json(ws.night_dream("n2") / "writer" / "writer.json")["continued_from"] == \
        "models/nights/n1/dream/writer"
    lineage = read_json(ws.challenger_lineage("n2"))
    assert lineage["nights"] == ["n1", "n2"] and lineage["adapters"][:2] == ["models/nights/n1/adapter",
                                                                             "models/nights/n1/dream/adapter"]
    stale = ws.night_dream("n2") / "adapter" / "stale.txt"
    stale.write_text("from an earlier run")
    dream.run(params, ws)
    assert not stale.exists()  # a rerun starts from an empty dream folder


def test_dream_params_are_checked():
    from lmsleep.config import params_from_dict

    with pytest.raises(ValueError, match="dream.kinds"):
        params_from_dict({"dream": {"kinds": ["qa", "poem"]}})
    with pytest.raises(ValueError, match="tau_metric"):
        params_from_dict({"dream": {"tau_metric": "vibes"}})
    with pytest.raises(ValueError, match="dream.enabled must be bool"):
        params_from_dict({"dream": {"enabled": "yes"}})
    assert params_from_dict({"dream": {"enabled": False, "top_k": 3}}).dream.top_k == 3


def test_rehearsal_is_guarded_again_and_the_guard_is_logged(night, monkeypatch):
    params, ws = night
    params.seed.method = "ks"
    params.seed.ks_drift_budget, params.seed.ks_reading_budget = 1e-9, 1e-9  # any rise is past: both must act
    monkeypatch.setattr(drift_guard, "reading_targets", gold_reading_targets)  # the tiny model reads nothing right
    seed.run(params, ws)
    summary = dream.run(params, ws)
    assert summary["rehearsed"] is True
    guard = read_json(ws.night_dream("n1") / "dream_log.json")["stats"]["drift_guard"]
    assert summary["drift_guard_scale"] == guard["scale"] < 1.0  # the rehearsed expert was scaled back into both
    assert guard["rise_left"] <= 1e-9 and guard["reading_rise_left"] <= 1e-9
    assert guard["rise_full"] > 1e-9 or guard["reading_rise_full"] > 1e-9
