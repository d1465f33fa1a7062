"""bench/expert_scale.py: a tiny run end to end; at scale 0 the expert adds nothing, so nothing rises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def test_tiny_expert_scale_run_measures_each_scale(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    run = subprocess.run([sys.executable, str(PROJECT / "bench" / "expert_scale.py"), "--model", "tiny",
                          "--set", "ks_steps=2", "--set", "ks_lr=0.05", "--scales", "1,0", "--gated",
                          "--cache-dir", str(tmp_path / "cache"), "--out", str(out)],
                         cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["model"] == "tiny" and result["set"] == {"ks_steps": 2, "ks_lr": 0.05} and result["gated"]
    full, off = result["by_scale"]["1.0"], result["by_scale"]["0.0"]
    assert full["probes"] == off["probes"] == 24 and len(off["answers"]) == 24
    assert off["reference_rise"] == 0.0 and off["drift_text_rise"] == 0.0  # B = 0: exactly the model before
    assert full["reference_rise"] != 0.0  # two steps at lr 0.05 moved the expert
    assert set(result["mean_gate"]) == {"reference", "probes"} and result["mean_gate"]["probes"]
