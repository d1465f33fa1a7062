"""The evaluate stage end to end on a tiny model in a temp workspace: `pytest tests/test_evaluate.py` (~15 s on CPU).

The challenger carries a real LoRA adapter with random (non-zero) weights, so "before" and "after" are different
models and the lineage merge path is exercised; nothing here needs a network or a hub.
"""

import math

import pytest

from lmsleep import models
from lmsleep.config import Params, PrepareModelConfig, Workspace
from lmsleep.errors import NightStopped
from lmsleep.memory import read_json, read_jsonl, write_json, write_jsonl
from lmsleep.stages import evaluate

REFERENCE = "The ferry crosses the river each morning. Lily and Tom watch the boats and count the birds. " * 15

EARLIER = [
    {"id": "m-001", "time": "2026-11-25T09:00:00Z", "source": "chat:alice", "kind": "document",
     "text": "The lighthouse on Gull Point is painted green and white.",
     "probes": [{"question": "What colours is the Gull Point lighthouse?", "answer": "green and white"}]},
]
TONIGHT = [
    {"id": "m-101", "time": "2026-11-26T09:14:00Z", "source": "chat:alice", "kind": "document",
     "text": "Mira Kovalenko runs the Tallow Bridge ferry. It leaves at seven.",
     "probes": [{"question": "Who runs the Tallow Bridge ferry?", "answer": "Mira Kovalenko"},
                {"question": "When does the Tallow Bridge ferry leave?", "answer": "at seven"}]},
    {"id": "m-102", "time": "2026-11-26T10:00:00Z", "source": "chat:bob", "kind": "document",
     "text": "A memory without any probes still counts as a memory."},
    {"id": "m-103", "time": "2026-11-26T11:00:00Z", "source": "chat:bob", "kind": "dialogue",
     "text": "User: my cat is called Pepper. Assistant: Pepper is a fine name.",
     "probes": [{"question": "What is the user's cat called?", "answer": "Pepper"}]},
]


def make_workspace(tmp_path, tonight_memories, earlier_memories=None):
    """A workspace with a tiny base model, tonight's (and optionally one earlier night's) data and a challenger."""
    ws = Workspace(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "reference.txt").write_text(REFERENCE)
    base = ws.base_model("tiny")
    corpus = [REFERENCE, models.TINY_FALLBACK_CORPUS]
    models.build_tiny(base, PrepareModelConfig(name="tiny", tiny_vocab_size=400), corpus)
    parent = models.base_lineage(ws, PrepareModelConfig(name="tiny"))
    if earlier_memories is not None:
        write_jsonl(ws.night_data("n1") / "accepted.jsonl", earlier_memories)
        parent["nights"] = ["n1"]  # the champion already slept on night n1 (adapter-free is enough here)
    write_jsonl(ws.night_data("n2") / "accepted.jsonl", tonight_memories)
    challenger = {**parent, "nights": parent["nights"] + ["n2"], "parent": parent}
    challenger["adapters"] = [save_random_adapter(ws, base)]
    write_json(ws.night_model("n2") / "lineage.json", challenger)
    params = Params()
    params.night.id = "n2"
    params.evaluate.max_new_tokens = 6
    params.evaluate.batch_size = 4
    params.evaluate.max_reference_tokens = 64
    return params, ws


def save_random_adapter(ws, base):
    """A LoRA adapter with non-zero B (init_lora_weights=False), so merging it really changes the model."""
    from peft import LoraConfig, get_peft_model

    model, _ = models.load_base(base)
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    path = ws.night_model("n2") / "adapter"
    lora.save_pretrained(path)
    return str(path.relative_to(ws.root))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    params, ws = make_workspace(tmp_path_factory.mktemp("ws"), TONIGHT, EARLIER)
    return evaluate.run(params, ws), ws


def test_eval_json_has_every_metric_in_range(evaluated):
    summary, ws = evaluated
    on_disk = read_json(ws.night_report("n2") / "eval.json")
    assert on_disk == summary
    assert (summary["probes"], summary["memories"], summary["retention_probes"]) == (3, 3, 1)
    for condition in ("acquisition", "in_context", "retention"):
        for when in ("before", "after"):
            for metric in (f"{condition}_{when}", f"{condition}_f1_{when}"):
                assert 0.0 <= summary[metric] <= 1.0, metric
                low, high = summary[f"{metric}_ci95"]
                assert 0.0 <= low <= summary[metric] <= high <= 1.0, metric
    assert summary["in_context_accuracy"] == summary["in_context_before"]
    for when in ("before", "after"):
        assert math.isfinite(summary[f"perplexity_{when}"]) and summary[f"perplexity_{when}"] > 1
    # the adapter changed the weights, so the general-ability measurement moved
    assert summary["perplexity_before"] != summary["perplexity_after"]


def test_answers_have_one_row_per_probe(evaluated):
    summary, ws = evaluated
    rows = read_jsonl(ws.night_report("n2") / "answers.jsonl")
    assert len(rows) == summary["probes"] + summary["retention_probes"]
    tonight = [r for r in rows if r["set"] == "tonight"]
    assert [r["memory_id"] for r in tonight] == ["m-101", "m-101", "m-103"]
    for row in tonight:
        for column in ("prediction", "correct", "f1"):
            for suffix in ("before", "after", "in_context_before", "in_context_after"):
                assert f"{column}_{suffix}" in row
    (earlier,) = [r for r in rows if r["set"] == "retention"]
    assert earlier["night"] == "n1" and "prediction_after" in earlier and "prediction_in_context_after" not in earlier
    assert not any("context" in row for row in rows)  # the memory text is not copied into the report


def test_plots_written(evaluated):
    summary, ws = evaluated
    for name in summary["plots"]:
        path = ws.night_report("n2") / name
        assert path.exists() and path.read_bytes().startswith(b"\x89PNG")


def test_no_probes_and_no_earlier_nights_give_nulls(tmp_path):
    memories = [{k: v for k, v in m.items() if k != "probes"} for m in TONIGHT]
    params, ws = make_workspace(tmp_path, memories)
    summary = evaluate.run(params, ws)
    assert summary["probes"] == 0 and summary["memories"] == 3
    for key in ("acquisition_before", "acquisition_after", "in_context_accuracy", "retention_after"):
        assert summary[key] is None
    assert any("no probes" in note for note in summary["notes"])
    assert read_jsonl(ws.night_report("n2") / "answers.jsonl") == []
    assert summary["perplexity_after"] > 1
    assert (ws.night_report("n2") / "accuracy.png").exists()


def test_missing_reference_stops_the_night(tmp_path):
    params, ws = make_workspace(tmp_path, TONIGHT)
    params.evaluate.reference_text = "data/absent.txt"
    with pytest.raises(NightStopped, match="reference"):
        evaluate.run(params, ws)
