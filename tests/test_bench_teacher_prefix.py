"""bench/teacher_prefix.py: a night's teacher side with and without the shared memory prefix, tiny model, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]


def test_tiny_teacher_prefix_bench_reads_each_memory_once(tmp_path: Path) -> None:
    out = tmp_path / "teacher_prefix.json"
    run = subprocess.run([sys.executable, str(PROJECT / "bench" / "teacher_prefix.py"), "--model", "tiny",
                          "--memories", "demo", "--passages", "2", "--out", str(out)], cwd=PROJECT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    entry = json.loads(out.read_text())["runs"]["tiny-demo2"]
    for mode in ("shared", "plain"):
        assert entry[f"{mode}_memories"] == 2 and entry[f"{mode}_samples"] > 0
        assert entry[f"{mode}_scored"] == entry[f"{mode}_samples"]  # lambda 0: everything scored up front
        assert entry[f"{mode}_wall_s"] > 0 and entry[f"{mode}_peak_rss_mb"] > 0
    # the same prompts cost fewer token positions when each memory is read once per group
    assert entry["shared_model_tokens"] < entry["plain_model_tokens"]
    assert entry["model_tokens_ratio"] == pytest.approx(entry["shared_model_tokens"] / entry["plain_model_tokens"],
                                                        abs=1e-3)
    assert entry["speedup"] == pytest.approx(entry["plain_wall_s"] / entry["shared_wall_s"], abs=1e-2)
    assert "speedup" in run.stdout
