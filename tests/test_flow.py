"""The Prefect side of flows/nightly.py: the cron deployment, scheduled night ids and the retry policy of stage tasks."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from lmsleep.config import Params, render_params_yaml
from lmsleep.errors import NightStopped
from lmsleep.pipeline import STAGES


def write_params(root, params: Params) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(render_params_yaml(params), encoding="utf-8")


def test_nightly_deployment_carries_the_cron_of_params(prefect_harness, tmp_path) -> None:
    from prefect import get_client

    from flows.nightly import deployment

    params = Params()
    params.night.cron, params.night.timezone = "30 3 * * 1-5", "Europe/Paris"  # not the defaults: read, not assumed
    write_params(tmp_path, params)

    deployment_id = deployment(root=str(tmp_path)).apply()  # sync in a sync context (async_dispatch)

    with get_client(sync_client=True) as client:
        stored = client.read_deployment_by_name("nightly-sleep/nightly")
    assert stored.id == deployment_id
    assert stored.name == "nightly"
    assert [(s.schedule.cron, s.schedule.timezone) for s in stored.schedules] == [("30 3 * * 1-5", "Europe/Paris")]
    assert all(s.active for s in stored.schedules)
    assert stored.parameters["root"] == str(tmp_path.resolve())
    assert stored.parameters["params_file"] == "params.yaml"
    assert "night" not in stored.parameters  # scheduled runs name their night by date


def test_scheduled_night_id_is_the_local_date() -> None:
    from flows.nightly import scheduled_night_id

    params = Params()
    for zone in ("UTC", "Pacific/Kiritimati", "Pacific/Pago_Pago"):  # UTC+14 and UTC-11: dates differ from UTC
        params.night.timezone = zone
        before = dt.datetime.now(ZoneInfo(zone)).date()
        night = scheduled_night_id(params)
        after = dt.datetime.now(ZoneInfo(zone)).date()
        assert dt.date.fromisoformat(night) in (before, after)
        assert night == dt.date.fromisoformat(night).isoformat()


def test_build_params_names_an_unnamed_night_by_date(tmp_path) -> None:
    from flows.nightly import build_params, scheduled_night_id

    write_params(tmp_path, Params())
    params = build_params(str(tmp_path), "params.yaml", [], None, None, None)
    assert params.night.id == scheduled_night_id(params)
    named = build_params(str(tmp_path), "params.yaml", ["seed.epochs=3"], "n-7", "s3://b/in", None)
    assert (named.night.id, named.night.inbox, named.seed.epochs) == ("n-7", "s3://b/in", 3)


# ---------------------------------------------------------------- retries


def test_retry_condition_on_failed_states() -> None:
    from prefect.states import Completed, Failed

    from flows.nightly import _retry_unless_stopped

    assert _retry_unless_stopped(None, None, Failed(data=NightStopped("nothing accepted"))) is False
    assert _retry_unless_stopped(None, None, Failed(data=ConnectionError("S3 hiccup"))) is True
    assert _retry_unless_stopped(None, None, Failed(data=RuntimeError("boom"))) is True
    assert _retry_unless_stopped(None, None, Completed(data={"ok": 1})) is False


@pytest.mark.parametrize(("error", "attempts"), [(NightStopped, 1), (ConnectionError, 3)])
def test_stage_tasks_retry_everything_but_night_stopped(prefect_harness, error, attempts) -> None:
    """A real task with the stage tasks' options (persist_result=False, our condition) under the test server."""
    from prefect import flow, task

    from flows.nightly import _retry_unless_stopped

    calls: list[int] = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=_retry_unless_stopped, persist_result=False)
    def flaky() -> None:
        calls.append(1)
        raise error("fails every time")

    @flow
    def one_task() -> None:
        flaky()

    state = one_task(return_state=True)
    assert state.is_failed()
    assert len(calls) == attempts
    with pytest.raises(error):
        state.result()


def test_stage_tasks_retry_policy() -> None:
    from flows.nightly import STAGE_TASKS, _retry_unless_stopped

    assert list(STAGE_TASKS) == list(STAGES)
    assert {stage: t.name for stage, t in STAGE_TASKS.items()} == {stage: stage for stage in STAGES}
    assert STAGE_TASKS["collect"].retries == 2  # the inbox may be a flaky S3
    assert all(t.retries == 1 for stage, t in STAGE_TASKS.items() if stage != "collect")
    assert all(t.retry_condition_fn is _retry_unless_stopped for t in STAGE_TASKS.values())
