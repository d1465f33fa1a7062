"""lmsleep bench --workers: chains in spawned processes give what one process gives; how many workers auto picks."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_bench_harness import FAST  # a night in seconds on the tiny model

from lmsleep.bench import workers
from lmsleep.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: both runs compute with one thread


def _drop_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "ks_seconds")} for r in rows]


def test_two_worker_processes_give_what_one_process_gives(make_tiny_workspace, tmp_path, capfd):
    ws = make_tiny_workspace().ws
    methods = ("base", "sft", "context_distill_offpolicy", "sleep_ks")  # the last two: the same KS night
    args = ["bench", "quality", "--seeds", "2", "--limit", "2", "--model", "tiny", "--root", str(ws.root),
            "--option", "sets=demo", "--methods", ",".join(methods), *FAST]
    restored = "this KS night was trained earlier in this run with the same inputs"
    assert main([*args, "--out", str(tmp_path / "one"), "--workers", "1"]) == 0
    assert capfd.readouterr().out.count(restored) == 2  # sleep_ks restores context_distill's night, each seed
    assert main([*args, "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    assert capfd.readouterr().out.count(restored) == 2  # in the workers too: the two ran in one process
    one, two = (json.loads((tmp_path / d / "seed_quality.json").read_text()) for d in ("one", "two"))
    assert one["workers"] == 1 and two["workers"] == 2
    assert two["scores"] == one["scores"]  # same rows in the same order: merged as one process runs them
    assert _drop_timings(two["steps"]) == _drop_timings(one["steps"])
    assert two["aggregate"] == one["aggregate"]
    for name in ("seed_quality_answers.jsonl", "seed_quality_train_texts.jsonl"):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text(), name
    assert {(s["seed"], s["method"]) for s in two["scores"]} == {(s, m) for s in (0, 1) for m in methods}
    assert not list((tmp_path / "two").glob("*.partial.*"))


def test_two_workers_resume_a_finished_run_as_one_straight_process_runs_it(make_tiny_workspace, tmp_path):
    """--resume --workers 2 adds seeds to a run two workers finished: the same scores, rows and aggregates as one
    uninterrupted one-process run of all the seeds."""
    ws = make_tiny_workspace().ws
    args = ["bench", "quality", "--limit", "1", "--model", "tiny", "--root", str(ws.root), "--option", "sets=demo",
            "--methods", "base,sft,sleep_ks", *FAST]
    assert main([*args, "--seeds", "1", "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    first = json.loads((tmp_path / "two" / "seed_quality.json").read_text())
    assert main([*args, "--seeds", "2", "--resume", "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    assert main([*args, "--seeds", "2", "--out", str(tmp_path / "one"), "--workers", "1"]) == 0
    resumed, straight = (json.loads((tmp_path / d / "seed_quality.json").read_text()) for d in ("two", "one"))
    assert resumed["resumed"]["from_seeds"] == [0] and resumed["seeds"] == straight["seeds"] == [0, 1]
    assert [s for s in resumed["scores"] if s["seed"] == 0] == first["scores"]
    assert resumed["scores"] == straight["scores"]
    assert _drop_timings(resumed["steps"]) == _drop_timings(straight["steps"])
    assert resumed["aggregate"] == straight["aggregate"]
    answers = [json.loads(line) for line in (tmp_path / "two" / "seed_quality_answers.jsonl").read_text().splitlines()]
    assert {a["seed"] for a in answers} == {0, 1}
    assert not list((tmp_path / "two").glob("*.partial.*"))


def test_a_failing_chain_in_a_worker_fails_the_run_and_stops_the_others(make_tiny_workspace, tmp_path, capsys):
    import multiprocessing

    ws = make_tiny_workspace().ws
    args = ["bench", "quality", "--seeds", "1", "--limit", "1", "--model", "tiny", "--root", str(ws.root),
            "--option", "sets=demo", "--methods", "sft,sleep_ks", "--out", str(tmp_path), "--workers", "2",
            *FAST, "--set", "seed.lora_rank=0",  # the sft night refuses its LoRA rank in its worker
            "--set", "seed.ks_steps=100000"]  # while the KS night beside it would run for hours
    others = set(multiprocessing.active_children())  # other tests' processes, if any
    assert main(args) != 0
    assert "`r` should be a positive integer" in capsys.readouterr().err  # peft, raised in a worker
    assert not (tmp_path / "seed_quality.json").exists()
    deadline = time.monotonic() + 30  # the KS night was stopped, not left to run for hours
    while set(multiprocessing.active_children()) - others and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not set(multiprocessing.active_children()) - others


def test_methods_that_share_ks_nights_are_bundled_per_seed_and_chain():
    items = [workers.Item(seed, (m,), chain) for seed in (0, 1) for m in ("base", "ks_a", "sft", "ks_b")
             for chain in (0, 1)]
    bundled = workers.bundle(items, lambda name: name.startswith("ks_"))
    assert sorted((i.seed, i.methods, i.chain) for i in bundled if len(i.methods) > 1) == [
        (s, ("ks_a", "ks_b"), c) for s in (0, 1) for c in (0, 1)]
    assert sorted(m for i in bundled for m in i.methods) == sorted(m for i in items for m in i.methods)
    assert all(len(i.methods) == 1 for i in bundled if i.methods[0] in ("base", "sft"))


def test_auto_workers_follow_the_cores_and_the_work(monkeypatch):
    monkeypatch.delenv(workers.ENV, raising=False)
    monkeypatch.setattr(workers, "cores", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert workers.resolve(None, 8) == 2 and workers.resolve("auto", 8) == 2 and workers.resolve(0, 8) == 2
    assert workers.resolve("auto", 1) == 1  # one chain: no process to spare
    monkeypatch.setattr(workers, "cores", lambda: 16)
    assert workers.resolve("auto", 30) == workers.MAX_AUTO
    assert workers.resolve("3", 30) == 3 and workers.resolve(5, 2) == 5  # asked for: as given
    monkeypatch.setenv(workers.ENV, "1")
    assert workers.resolve(None, 30) == 1 and workers.resolve("auto", 30) == workers.MAX_AUTO
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert workers.resolve("auto", 30) == 1  # one GPU: one process
    for bad in ("-1", "two"):
        with pytest.raises(ValueError, match="--workers"):
            workers.resolve(bad, 4)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert workers.threads_per_worker(2) == 1 and workers.threads_per_worker(3) == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    assert workers.threads_per_worker(4) == 4


def test_a_benchmark_with_its_own_protocol_refuses_workers(make_tiny_workspace, capsys):
    ws = make_tiny_workspace().ws
    assert main(["bench", "babi", "--seeds", "1", "--limit", "1", "--root", str(ws.root), "--workers", "2"]) == 2
    assert "runs its own protocol in one process" in capsys.readouterr().err


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state  # a zombie has exited


@pytest.mark.skipif(not Path("/proc").exists(), reason="reads /proc")
def test_a_worker_ends_when_its_parent_is_killed(tmp_path):
    """kill -9 of `lmsleep bench` must not leave its workers running a night on (seen: two orphans at full CPU)."""
    watching = tmp_path / "watching"
    child = ("import pathlib, time; from lmsleep.bench.workers import exit_with_parent; exit_with_parent(0.1); "
             f"pathlib.Path({str(watching)!r}).touch(); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               f"p = subprocess.Popen([sys.executable, '-c', {child!r}]); print(p.pid, flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    deadline = time.monotonic() + 60
    while not watching.exists() and time.monotonic() < deadline:  # imported torch, watching its parent
        time.sleep(0.1)
    assert watching.exists() and _running(worker)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 20
    while _running(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(worker)
