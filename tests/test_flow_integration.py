"""Integration: a whole tiny night through the Prefect flow with its inbox on S3, and the DVC pipeline pushed to S3.

Prefect path: `flows.nightly.nightly_sleep` under Prefect's test server, inbox `s3://<bucket>/inbox` on a real
moto_server. DVC path: `dvc repro` in a temp git repo (see the `dvc_repo` fixture), then `dvc push` to an S3 remote
on the same server. Each path runs its night once per session; the tests below check different things about it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import TinyWorkspace, list_keys, new_bucket, run_cmd, s3_client
from lmsleep.inbox import Inbox
from lmsleep.memory import read_json, read_jsonl
from lmsleep.pipeline import STAGES

NIGHT = "flow-night"
METRIC_KEYS = ("acquisition_before", "acquisition_after", "in_context_accuracy", "retention_after",
               "perplexity_before", "perplexity_after", "promoted")


@dataclass(frozen=True)
class FlowNight:
    tw: TinyWorkspace
    endpoint: str
    bucket: str
    inbox: str
    state: Any  # the Prefect State of the flow run
    seconds: float


def run_flow(tw: TinyWorkspace, inbox: str):
    """One flow run for NIGHT; returns its final Prefect State."""
    from flows.nightly import nightly_sleep

    return nightly_sleep(night=NIGHT, inbox=inbox, root=str(tw.root), return_state=True)


@pytest.fixture(scope="module")
def flow_night(prefect_harness, moto_s3: str, make_tiny_workspace) -> FlowNight:
    tw = make_tiny_workspace()
    bucket = new_bucket(moto_s3)
    s3_client(moto_s3).put_object(Bucket=bucket, Key="inbox/day1.jsonl", Body=tw.day_bytes())
    inbox = f"s3://{bucket}/inbox"
    started = time.perf_counter()
    state = run_flow(tw, inbox)
    return FlowNight(tw, moto_s3, bucket, inbox, state, time.perf_counter() - started)


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """path -> (mtime_ns, sha256) for every file of a workspace."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


def s3_snapshot(endpoint: str, bucket: str) -> dict[str, str]:
    client = s3_client(endpoint)
    return {key: client.head_object(Bucket=bucket, Key=key)["ETag"] for key in list_keys(endpoint, bucket)}


def task_runs_of(flow_run_id, expected: int, timeout: float = 30.0) -> list:
    """The flow run's task runs as the API stores them (task states arrive as events: poll until they are final)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flt = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=flt)
            if (len(runs) >= expected and all(r.state and r.state.is_final() for r in runs)) or time.monotonic() > deadline:
                return runs
            time.sleep(0.5)


# ---------------------------------------------------------------- the Prefect path


def test_flow_night_completes_every_stage_as_a_task(flow_night: FlowNight) -> None:
    state = flow_night.state
    assert state.is_completed(), f"flow run ended {state.type}: {state.message}"
    summaries = state.result()
    assert list(summaries) == list(STAGES)
    assert summaries["collect"]["collected"] == 6 and summaries["collect"]["files"] == 1
    assert summaries["validate"]["accepted"] == 4 and summaries["validate"]["quarantined"] == 2
    runs = task_runs_of(state.state_details.flow_run_id, len(STAGES))
    by_stage = {run.name.rsplit("-", 1)[0]: run for run in runs}
    assert sorted(by_stage) == sorted(STAGES), [run.name for run in runs]
    for stage, run in by_stage.items():
        assert run.state.is_completed(), f"task {stage}: {run.state.type} {run.state.message}"
    print(f"flow night: {flow_night.seconds:.1f} s")


def test_flow_night_dreams_between_seed_and_evaluate(flow_night: FlowNight) -> None:
    summaries, ws = flow_night.state.result(), flow_night.tw.ws
    assert list(summaries).index("dream") == list(summaries).index("seed") + 1
    dreamt = summaries["dream"]
    assert dreamt["enabled"] and dreamt["made"] > 0 and dreamt["rehearsed"], dreamt
    assert ws.challenger_lineage(NIGHT) == ws.night_dream(NIGHT) / "lineage.json"
    lineage = read_json(ws.challenger_lineage(NIGHT))
    assert lineage["adapters"][-1] == f"models/nights/{NIGHT}/dream/adapter"
    assert len(read_jsonl(ws.night_dream(NIGHT) / "ledger.jsonl")) == dreamt["made"]
    assert (ws.night_dream(NIGHT) / "writer" / "adapter_model.safetensors").exists()
    assert read_json(ws.night_report(NIGHT) / "eval.json")["nights_after"] == lineage["nights"]
    print(f"dream stage of the tiny night: {dreamt['seconds']} s")


def test_flow_night_writes_metrics(flow_night: FlowNight) -> None:
    metrics_path = flow_night.tw.ws.night_report(NIGHT) / "metrics.json"
    metrics = read_json(metrics_path)
    missing = [key for key in METRIC_KEYS if key not in metrics]
    assert not missing, f"metrics.json lacks {missing}: {sorted(metrics)}"
    assert isinstance(metrics["promoted"], bool)
    assert metrics["perplexity_before"] > 0 and metrics["perplexity_after"] > 0
    assert metrics["retention_after"] is None  # the first night has no earlier nights to retain
    assert (flow_night.tw.ws.night_report(NIGHT) / "report.md").exists()


def test_flow_night_consumes_the_s3_inbox(flow_night: FlowNight) -> None:
    keys = list_keys(flow_night.endpoint, flow_night.bucket, "inbox/")
    assert keys == [f"inbox/consumed/{NIGHT}/day1.jsonl"]
    assert Inbox(flow_night.inbox).pending("*") == []
    manifest = read_json(flow_night.tw.ws.night_data(NIGHT) / "collect_manifest.json")
    assert [c["to"] for c in manifest["consumed"]] == [f"s3://{flow_night.bucket}/inbox/consumed/{NIGHT}/day1.jsonl"]
    body = s3_client(flow_night.endpoint).get_object(Bucket=flow_night.bucket, Key=keys[0])["Body"].read()
    assert body == flow_night.tw.day_bytes()  # moved, byte for byte


def test_flow_night_quarantines_malformed_lines(flow_night: FlowNight) -> None:
    data = flow_night.tw.ws.night_data(NIGHT)
    quarantined = {row["line"]: row for row in read_jsonl(data / "quarantine.jsonl")}
    assert sorted(quarantined) == [5, 6]
    assert any("invalid JSON" in reason for reason in quarantined[5]["reasons"]), quarantined[5]["reasons"]
    assert any("kind" in reason for reason in quarantined[6]["reasons"]), quarantined[6]["reasons"]
    assert all(row["source_uri"].startswith(f"s3://{flow_night.bucket}/inbox/") for row in quarantined.values())
    accepted = read_jsonl(data / "accepted.jsonl")
    assert len(accepted) == 4 and all(m["provenance"]["sha256"] for m in accepted)


def test_flow_rerun_of_a_finished_night_is_a_noop(flow_night: FlowNight) -> None:
    before, s3_before = snapshot(flow_night.tw.root), s3_snapshot(flow_night.endpoint, flow_night.bucket)
    state = run_flow(flow_night.tw, flow_night.inbox)
    assert state.is_completed()
    assert state.result() == {}
    assert snapshot(flow_night.tw.root) == before
    assert s3_snapshot(flow_night.endpoint, flow_night.bucket) == s3_before


# ---------------------------------------------------------------- the DVC path


def test_dvc_repro_runs_the_night_from_the_s3_inbox(dvc_repo) -> None:
    report = dvc_repo.root / "reports" / dvc_repo.night
    metrics = read_json(report / "metrics.json")
    assert all(key in metrics for key in METRIC_KEYS), sorted(metrics)
    assert list_keys(dvc_repo.endpoint, dvc_repo.bucket, "inbox/") == [f"inbox/consumed/{dvc_repo.night}/day1.jsonl"]
    lock = (dvc_repo.root / "dvc.lock").read_text()
    assert all(f"  {stage}:" in lock for stage in STAGES)
    shown = json.loads(run_cmd(["dvc", "metrics", "show", "--json"], dvc_repo.root).stdout)
    assert "promoted" in json.dumps(shown)


def lock_objects(root: Path) -> tuple[set[str], set[str]]:
    """(cache paths `files/md5/xx/yyy` of every cached output in dvc.lock, dir contents included; uncached outs)."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    cache = root / ".dvc" / "cache"
    objects, uncached = set(), set()
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            md5 = out["md5"]
            obj = f"files/md5/{md5[:2]}/{md5[2:]}"
            if not (cache / obj).exists():  # `cache: false` outputs live in git, not in the cache
                uncached.add(out["path"])
                continue
            objects.add(obj)
            if md5.endswith(".dir"):
                objects |= {f"files/md5/{e['md5'][:2]}/{e['md5'][2:]}" for e in json.loads((cache / obj).read_text())}
    return objects, uncached


def test_dvc_push_stores_every_output_in_s3(dvc_repo) -> None:
    run_cmd(["dvc", "remote", "add", "-f", "-d", "s3remote", f"s3://{dvc_repo.bucket}/dvcstore"], dvc_repo.root)
    run_cmd(["dvc", "push"], dvc_repo.root)
    expected, uncached = lock_objects(dvc_repo.root)
    assert uncached == {f"reports/{dvc_repo.night}/metrics.json", f"reports/{dvc_repo.night}/report.md"}
    assert len(expected) > 10, expected  # base model, night data, adapter, eval outputs
    pushed = set(list_keys(dvc_repo.endpoint, dvc_repo.bucket, "dvcstore/"))
    missing = sorted(f"dvcstore/{path}" for path in expected if f"dvcstore/{path}" not in pushed)
    assert not missing, f"not pushed: {missing}"
    status = json.loads(run_cmd(["dvc", "status", "--cloud", "--json"], dvc_repo.root).stdout or "{}")
    assert status == {}, status
