"""seed.ks_sender = fast_level (lmsleep.ks.awake): the day is read awake into a fast level by test-time training, then
that level is the night's sender: its knowledge goes into one new expert of the night level and it is reset. The
stage exports that expert like the context sender's, and the model after the night has learnt the day's text."""

import json

import pytest
import torch
from tinyworld import memory, tiny_workspace

from lmsleep.ks.awake import AWAKE, NIGHT, seed_through_fast_level
from lmsleep.memory import read_json, write_jsonl
from lmsleep.models import load_base, load_lineage
from lmsleep.stages import seed

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

FAST = {"method": "ks", "ks_sender": "fast_level", "ks_steps": 30, "ks_lr": 1e-2, "ks_expert_rank": 4,
        "ks_fast_chunk_tokens": 16, "ks_fast_lr": 1e-2, "ks_fast_passes": 3, "batch_size": 4}


def _text_loss(model, tokenizer, text: str) -> float:
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]],
                       device=next(model.parameters()).device)
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def _configure(params, **extra):
    for key, value in (FAST | extra).items():
        setattr(params.seed, key, value)


def test_the_fast_level_sender_moves_the_day_into_one_night_expert(tmp_path, tmp_path_factory):
    params, ws = tiny_workspace(tmp_path / "ws", tmp_path_factory.getbasetemp() / "tiny-cache-awake")
    _configure(params)
    memories = [memory(i) for i in range(3)]
    model, tokenizer = load_base(ws.base_model("tiny"))
    base = {k: v.clone() for k, v in model.state_dict().items()}
    before = [_text_loss(model, tokenizer, m["text"]) for m in memories]
    cms, losses, stats = seed_through_fast_level(model, tokenizer, memories, params.seed)
    assert stats["awake_steps"] > 0 and stats["awake_losses"][-1] < stats["awake_losses"][0]  # learnt awake
    assert cms.active_experts(AWAKE) == [] and cms.active_experts(NIGHT) == [stats["expert_index"]]  # sender reset
    assert len(losses) == params.seed.ks_steps and losses[-1] < losses[0]
    after = [_text_loss(cms, tokenizer, m["text"]) for m in memories]
    assert all(a < b for a, b in zip(after, before)), (before, after)  # the night expert holds the day's text
    assert all(torch.equal(v.cpu(), base[k]) for k, v in cms.unwrap().state_dict().items() if k in base)  # frozen
    texts = " ".join(t["text"] for t in stats["train_texts"])
    assert not any(p["question"] in texts for m in memories for p in m["probes"])  # memory text only, never probes


def test_the_seed_stage_exports_the_fast_level_night(tmp_path, tmp_path_factory):
    params, ws = tiny_workspace(tmp_path / "ws", tmp_path_factory.getbasetemp() / "tiny-cache-awake")
    _configure(params)
    memories = [memory(i) for i in range(3)]
    write_jsonl(ws.night_data("n1") / "accepted.jsonl", memories)
    summary = seed.run(params, ws)
    assert summary["method"] == "ks" and summary["sender"] == "fast_level" and summary["steps"] == 30
    lineage = read_json(ws.night_model("n1") / "lineage.json")
    model, tokenizer = load_lineage(ws, lineage)  # plain transformers + peft: the adapter of the one night expert
    base, _ = load_base(ws.base_model("tiny"))
    for m in memories:
        assert _text_loss(model, tokenizer, m["text"]) < _text_loss(base, tokenizer, m["text"])
    rows = [json.loads(line) for line in (ws.night_model("n1") / "train_texts.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in rows} == {"awake", "sleep"}
    assert not any(p["question"] in r["text"] for r in rows for m in memories for p in m["probes"])


def test_bad_fast_level_settings_are_clear_errors(tmp_path, tmp_path_factory):
    params, ws = tiny_workspace(tmp_path / "ws", tmp_path_factory.getbasetemp() / "tiny-cache-awake")
    _configure(params, ks_fast_chunk_tokens=100_000)
    model, tokenizer = load_base(ws.base_model("tiny"))
    with pytest.raises(ValueError, match="fewer than one chunk"):
        seed_through_fast_level(model, tokenizer, [memory(1)], params.seed)
    _configure(params, ks_sender="telepathy")
    write_jsonl(ws.night_data("n1") / "accepted.jsonl", [memory(1)])
    with pytest.raises(ValueError, match="ks_sender 'telepathy'"):
        seed.run(params, ws)
