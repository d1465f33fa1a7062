import json

import pytest
import torch
from safetensors.torch import load_file
from tinyworld import CANARY_A, CANARY_Q, memory, tiny_workspace

from lmsleep import registry
from lmsleep.errors import NightStopped
from lmsleep.memory import read_jsonl, write_jsonl
from lmsleep.stages import seed


@pytest.fixture
def night(tmp_path, tmp_path_factory):
    params, ws = tiny_workspace(tmp_path, tmp_path_factory.getbasetemp() / "tiny-cache-seed")
    memories = [memory(i, probes=[{"question": f"{CANARY_Q} {i}?", "answer": f"{CANARY_A} {i}"}]) for i in range(4)]
    write_jsonl(ws.night_data(params.night.id) / "accepted.jsonl", memories)
    params.seed.method = "sft"  # the baseline's own tests (the default, ks, is tested in test_ks_seed.py)
    return params, ws


def test_probes_never_reach_training_data(night, monkeypatch):
    params, ws = night
    seen_texts = []
    real_train = seed.train_sft_adapter

    def spy(model, tokenizer, texts, cfg):  # noqa: D401 - records every text that reaches training
        seen_texts.extend(texts)
        real_tokenizer_call = type(tokenizer).__call__

        def recording_call(self, text, *args, **kwargs):
            batch = text if isinstance(text, list) else [text]
            seen_texts.extend(batch)
            return real_tokenizer_call(self, text, *args, **kwargs)

        monkeypatch.setattr(type(tokenizer), "__call__", recording_call)
        return real_train(model, tokenizer, texts, cfg)

    monkeypatch.setattr(seed, "train_sft_adapter", spy)
    seed.run(params, ws)
    audit = (ws.night_model("n1") / "train_texts.jsonl").read_text()
    assert seen_texts and len(read_jsonl(ws.night_model("n1") / "train_texts.jsonl")) == 4
    for text in seen_texts + [audit]:
        assert "canary" not in text.lower()


def test_sft_trains_only_the_new_adapter_and_leaves_the_base_bit_identical(night):
    params, ws = night
    base_file = ws.base_model("tiny") / "model.safetensors"
    base_before = {k: v.clone() for k, v in load_file(base_file).items()}
    summary = seed.run(params, ws)
    assert summary["steps"] == params.seed.epochs  # 4 memories, batch 4
    base_after = load_file(base_file)
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)
    adapter = load_file(ws.night_model("n1") / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: every B moved
    lineage = json.loads((ws.night_model("n1") / "lineage.json").read_text())
    assert lineage["nights"] == ["n1"] and lineage["adapters"] == ["models/nights/n1/adapter"]
    assert lineage["parent"]["adapters"] == []


def test_sft_loss_falls_on_the_memories(night):
    params, ws = night
    params.seed.epochs = 6
    summary = seed.run(params, ws)
    assert summary["loss_last"] < summary["loss_first"]


def test_a_night_already_in_the_champion_is_refused(night):
    params, ws = night
    seed.run(params, ws)
    lineage = json.loads((ws.night_model("n1") / "lineage.json").read_text())
    registry.promote(ws, params.prepare_model, lineage, "n1", {})
    with pytest.raises(NightStopped, match="already part of the champion"):
        seed.run(params, ws)


def test_unknown_method_is_refused(night):
    params, ws = night
    params.seed.method = "magic"
    with pytest.raises(ValueError, match="not one of"):
        seed.run(params, ws)
