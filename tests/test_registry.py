import pytest

from lmsleep import registry
from lmsleep.config import PrepareModelConfig, Workspace

CFG = PrepareModelConfig(name="tiny")


def _lineage(*nights):
    return {"base": "tiny", "base_path": "models/base/tiny", "adapters": [f"models/nights/{n}/adapter" for n in nights],
            "nights": list(nights)}


def test_champion_is_the_base_model_until_a_promotion(tmp_path):
    ws = Workspace(tmp_path)
    assert registry.champion(ws, CFG)["adapters"] == []
    assert registry.champion_night(ws, CFG) is None
    assert registry.history(ws, CFG) == []


def test_promote_then_rollback_restores_each_previous_champion(tmp_path):
    ws = Workspace(tmp_path)
    registry.promote(ws, CFG, _lineage("n1"), "n1", {"acquisition_after": 0.5})
    registry.promote(ws, CFG, _lineage("n1", "n2"), "n2", {"acquisition_after": 0.7})
    assert registry.champion_night(ws, CFG) == "n2"
    assert registry.rollback(ws, CFG)["night"] == "n1"
    assert registry.champion(ws, CFG) == _lineage("n1")
    assert registry.rollback(ws, CFG)["night"] is None
    assert registry.champion(ws, CFG)["adapters"] == []
    with pytest.raises(ValueError, match="no earlier champion"):
        registry.rollback(ws, CFG)
    events = [(e["event"], e["night"]) for e in registry.history(ws, CFG)]
    assert events == [("promote", "n1"), ("promote", "n2"), ("rollback", "n1"), ("rollback", None)]


def test_pointer_is_replaced_atomically(tmp_path, monkeypatch):
    ws = Workspace(tmp_path)
    registry.promote(ws, CFG, _lineage("n1"), "n1", {})

    def broken_replace(src, dst):
        raise OSError("crash mid-promotion")

    monkeypatch.setattr("lmsleep.memory.os.replace", broken_replace)
    with pytest.raises(OSError):
        registry.promote(ws, CFG, _lineage("n1", "n2"), "n2", {})
    monkeypatch.undo()
    assert registry.champion_night(ws, CFG) == "n1"
    assert sorted(p.name for p in ws.registry("tiny").iterdir()) == ["champion.json", "history.jsonl"]


def test_registries_are_per_base_model(tmp_path):
    ws = Workspace(tmp_path)
    registry.promote(ws, CFG, _lineage("n1"), "n1", {})
    assert registry.champion_night(ws, PrepareModelConfig(name="smollm2")) is None
