"""bench/question_stop.py: question writing with and without the stop at '?', tiny model, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]


def test_tiny_question_stop_bench_reports_both_modes(tmp_path: Path) -> None:
    out = tmp_path / "question_stop.json"
    run = subprocess.run([sys.executable, str(PROJECT / "bench" / "question_stop.py"), "--model", "tiny", "--reps", "1",
                          "--out", str(out)], cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["model"] == "tiny" and result["memories"] == 12
    for mode in ("stop", "plain"):
        [row] = result["runs"][mode]
        assert row["generate_calls"] > 0 and 0 < row["decode_steps"] <= 32 * row["generate_calls"]
        assert row["wall_s"] > 0 and row["questions"] >= 0
    stop, plain = result["runs"]["stop"][0], result["runs"]["plain"][0]
    assert result["stop_vs_plain"]["decode_steps"] == pytest.approx(stop["decode_steps"] / plain["decode_steps"],
                                                                    abs=1e-3)
    assert "stop / plain" in run.stdout
