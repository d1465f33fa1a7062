"""W&B in offline mode for real: a stage run leaves an offline run with its config, metrics and artifact files."""

import os
import time

from tinyworld import tiny_params

from lmsleep.config import Workspace
from lmsleep.tracking import stage_run


def test_offline_run_records_params_metrics_and_artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    params = tiny_params("n7")
    params.tracking.wandb_mode = "offline"
    ws = Workspace(tmp_path)
    out = tmp_path / "collected.jsonl"
    out.write_text('{"a": 1}\n')
    with stage_run(params, ws, "collect") as tracker:
        tracker.log({"collected": 3, "note": "ignored: not a number"}, step=0)
        tracker.summary({"collected": 3})
        tracker.artifact("n7-collect", "collect", [out, tmp_path / "missing.json"])
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = {p.name for p in runs[0].rglob("*") if p.is_file()}
    assert any(name.endswith(".wandb") for name in files)  # the run log that `wandb sync` uploads later
    # W&B's service process writes the run log asynchronously; give a loaded machine time to flush it.
    deadline, payload = time.monotonic() + 30, b""
    while time.monotonic() < deadline:
        payload = b"".join(p.read_bytes() for p in runs[0].rglob("*.wandb"))
        if b"n7-collect" in payload and b"collected" in payload and b"seed" in payload:
            break
        time.sleep(0.5)
    assert b"n7-collect" in payload and b"collected" in payload and b"seed" in payload  # artifact, metric, config


def test_disabled_mode_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    params = tiny_params()
    with stage_run(params, Workspace(tmp_path), "validate") as tracker:
        tracker.log({"accepted": 1})
        tracker.artifact("x", "validate", [tmp_path])
    assert not (tmp_path / "wandb").exists() or not list((tmp_path / "wandb").glob("offline-run-*"))
    assert os.environ["WANDB_MODE"] == "disabled"


