"""The CLI end to end on a tiny model, in-process and without Prefect (the flow has its own integration test)."""

import json
import os

import pytest
from tinyworld import memory, tiny_workspace, write_day

from lmsleep.cli import main


@pytest.fixture
def workspace(tmp_path, tmp_path_factory, monkeypatch):
    params, ws = tiny_workspace(tmp_path, tmp_path_factory.getbasetemp() / "tiny-cache-cli")
    monkeypatch.setenv("LMSLEEP_ROOT", str(ws.root))
    write_day(ws.root / "data" / "inbox", "day1.jsonl", [memory(i) for i in range(1, 4)], [b"{broken"])
    return ws


def test_night_then_rerun_status_ask_and_rollback(workspace, capsys):
    ws = workspace
    # a low bar so the tiny model's night is promoted and rollback has something to undo
    args = ["--night", "n1", "--set", "promote.min_acquisition_gain=-1", "--set", "promote.max_perplexity_increase=10",
            "--set", "validate.max_rejection_rate=0.5"]
    assert main(["night", "--local", *args]) == 0
    out = capsys.readouterr().out
    assert "report:" in out and "acquisition_after" in out
    metrics = json.loads((ws.night_report("n1") / "metrics.json").read_text())
    assert metrics["promoted"] is True
    for key in ("acquisition_before", "acquisition_after", "in_context_accuracy", "retention_after",
                "perplexity_before", "perplexity_after"):
        assert key in metrics
    assert (ws.night_report("n1") / "report.md").exists()
    stamp = (ws.night_report("n1") / "metrics.json").stat().st_mtime_ns

    assert main(["night", "--local", *args]) == 0  # a finished night: nothing happens
    assert "already finished" in capsys.readouterr().out
    assert (ws.night_report("n1") / "metrics.json").stat().st_mtime_ns == stamp

    assert main(["status"]) == 0
    status = capsys.readouterr().out
    assert "champion:  n1" in status and "collect > validate > seed > dream > evaluate > promote" in status

    assert main(["ask", "Who steers ferry number 1?", "--max-new-tokens", "4"]) == 0
    assert "[champion: n1; memory in context: no]" in capsys.readouterr().out

    assert main(["rollback"]) == 0
    assert "champion is now: base" in capsys.readouterr().out
    assert main(["rollback"]) == 2  # nothing left to roll back: a clear error, not a traceback
    assert "no earlier champion" in capsys.readouterr().err


def test_a_night_with_nothing_valid_stops_with_a_message(workspace, capsys):
    for path in (workspace.root / "data" / "inbox").iterdir():
        path.unlink()
    write_day(workspace.root / "data" / "inbox", "junk.jsonl", [], [b"{nope", b"[1]"])
    assert main(["night", "--local", "--night", "bad"]) == 3
    err = capsys.readouterr().err
    assert "night stopped" in err and "quarantine" in err
    assert (workspace.night_data("bad") / "quarantine.jsonl").exists()


def test_stage_subcommands_match_the_pipeline():
    from lmsleep.cli import build_parser
    from lmsleep.pipeline import STAGES

    commands = build_parser()._subparsers._group_actions[0].choices
    for stage in STAGES:
        assert stage.replace("_", "-") in commands
    for extra in ("night", "demo", "ask", "status", "rollback", "params"):
        assert extra in commands


def test_threads_caps_torch_and_child_processes_and_refuses_zero(workspace, monkeypatch, capsys):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "")  # monkeypatch restores the variable the CLI sets
    try:
        assert main(["status", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == "1"
        assert main(["bench", "quality", "--threads", "0"]) == 2
        assert "--threads must be at least 1" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
