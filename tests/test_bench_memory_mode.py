"""bench/memory_mode.py: a KS night lean and fast, tiny model, end to end; both modes must train the same expert."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]


def test_tiny_memory_mode_bench_trains_the_same_night_in_both_modes(tmp_path: Path) -> None:
    out = tmp_path / "memory_mode.json"
    run = subprocess.run([sys.executable, str(PROJECT / "bench" / "memory_mode.py"), "--model", "tiny", "--source",
                          "demo", "--steps", "3", "--out", str(out)], cwd=PROJECT, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    [lean], [fast] = result["runs"]["lean"], result["runs"]["fast"]
    assert lean["ks_activation_checkpointing"] is True and lean["ks_return_freed_memory_kb"] == 256
    assert fast["ks_activation_checkpointing"] is False and fast["ks_return_freed_memory_kb"] == 0
    for row in (lean, fast):
        assert row["steps"] == 3 and len(row["losses"]) == 3 and row["prompts"] > 0
        assert row["loop_s"] > 0 and row["peak_rss_mb"] >= row["rss_after_load_mb"] > 0
    assert result["same_losses_and_expert"] is True
    assert lean["losses"] == fast["losses"] and lean["expert_sha256"] == fast["expert_sha256"]
    assert result["lean_vs_fast"]["loop_s"] == pytest.approx(lean["loop_s"] / fast["loop_s"], abs=1e-3)
    assert "lean / fast" in run.stdout
