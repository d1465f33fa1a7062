"""The nightly sleep as a Prefect flow: every stage of lmsleep.pipeline.STAGES as one task, with retries and logs.

    python flows/nightly.py serve     # register the cron deployment "nightly-sleep/nightly" and wait for its runs
    python flows/nightly.py run       # one night now (same as `lmsleep night`)

Start the UI first with `prefect server start --host 127.0.0.1` and point `PREFECT_API_URL` at it to see the
deployment, its schedule and every run; without a server, Prefect starts a temporary local one for the run.

With `infrastructure.mode: pools` in params.yaml, each stage instead runs as a flow run of deployment
`lmsleep-stage/<stage>` on the work pool params choose (flows/deployments.py registers them), one after the other.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any
from zoneinfo import ZoneInfo

from lmsleep.env import set_offline_env

set_offline_env()

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.deployments import run_deployment  # noqa: E402
from prefect.schedules import Cron  # noqa: E402

from lmsleep.config import Params, Workspace, load_params, params_from_dict, parse_overrides  # noqa: E402
from lmsleep.errors import NightStopped  # noqa: E402
from lmsleep.pipeline import STAGES, night_finished, run_stage  # noqa: E402

# Reading the inbox can hit a flaky S3; training and evaluation are deterministic and costly, so they retry once.
RETRIES = {"collect": 2}


def _retry_unless_stopped(task_obj: Any, task_run: Any, state: Any) -> bool:
    """A NightStopped is a verdict about the data (nothing accepted...), not a transient fault: never retry it."""
    try:
        state.result()
    except NightStopped:
        return False
    except Exception:  # noqa: BLE001 - any other failure may be transient
        return True
    return False


def _stage_body(stage: str, params_dict: dict[str, Any], root: str) -> dict[str, Any]:
    summary = run_stage(stage, params_from_dict(params_dict), Workspace.from_env(root))
    headline = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool)) or v is None}
    get_run_logger().info("%s: %s", stage, headline)  # scalars only: intervals and notes are in the stage's files
    return summary


def _stage_task(stage: str):
    """One task per stage, each with its own function name so Prefect keys (and the UI groups) them per stage."""

    def body(stage: str, params_dict: dict[str, Any], root: str) -> dict[str, Any]:
        return _stage_body(stage, params_dict, root)

    body.__name__ = body.__qualname__ = f"stage_{stage}"
    return task(body, name=stage, retries=RETRIES.get(stage, 1), retry_delay_seconds=5,
                retry_condition_fn=_retry_unless_stopped, persist_result=False)


STAGE_TASKS = {stage: _stage_task(stage) for stage in STAGES}


class StageRunFailed(RuntimeError):
    """Mode 'pools': a stage's own flow run did not complete, so the night stops there."""


def cancel_stage_run(flow_run_id: Any, message: str) -> None:
    """Ask the server to cancel a stage run that outlived `infrastructure.stage_timeout_seconds` (its pod is stopped
    by the worker). Best effort: the night fails either way."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Cancelling(message=message), force=True)


def _stage_run_summary(flow_run: Any) -> dict[str, Any]:
    """The stage's summary when its result was persisted (PREFECT_RESULTS_PERSIST_BY_DEFAULT), plus its run's id."""
    try:
        result = flow_run.state.result(raise_on_failure=False, retry_result_failure=False)
    except Exception:  # noqa: BLE001 - an unpersisted or unreachable result only costs the summary, not the night
        result = None
    return {**(result if isinstance(result, dict) else {}), "flow_run_id": str(flow_run.id)}


def run_stages_on_pools(params: Params, ws: Workspace) -> dict[str, dict[str, Any]]:
    """Mode 'pools': every stage, in order, as a flow run of `lmsleep-stage/<stage>` (a subflow of this night)."""
    from flows.deployments import STAGE_FLOW_NAME, check_stage_deployments, stage_job_variables, stage_root

    check_stage_deployments(params)
    logger = get_run_logger()
    roots = {stage: stage_root(params, stage, ws.root) for stage in STAGES}
    if len(set(roots.values())) > 1:
        logger.warning("stages run with different workspace roots %s: they share files only if these paths are the "
                       "same storage (e.g. the process worker mounts the workspace EFS there)", roots)
    limit = params.infrastructure.stage_timeout_seconds
    summaries: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        flow_run = run_deployment(
            f"{STAGE_FLOW_NAME}/{stage}",
            parameters={"stage": stage, "params_dict": params.to_dict(), "root": roots[stage]},
            job_variables=stage_job_variables(params, stage, ws.root),
            flow_run_name=f"{params.night.id}-{stage}",
            tags=[f"night:{params.night.id}"],
            timeout=limit or None,  # 0: a GPU stage may take hours, wait until the stage run is final
        )
        state = flow_run.state
        if limit and not (state and state.is_final()):
            try:
                cancel_stage_run(flow_run.id, f"lmsleep: stage_timeout_seconds={limit} exceeded")
                cancelled = "cancelled it"
            except Exception as exc:  # noqa: BLE001 - the night fails anyway; say that the run may still be going
                cancelled = f"cancelling it failed ({exc}): cancel flow run {flow_run.id} by hand"
            raise StageRunFailed(f"night {params.night.id}: stage {stage} (flow run {flow_run.id}) exceeded "
                                 f"infrastructure.stage_timeout_seconds={limit} (still "
                                 f"{state.name if state else 'without a state'}); {cancelled}; later stages were "
                                 f"not started")
        if state is None or not state.is_completed():
            name = state.name if state else "no state"
            message = f": {state.message}" if state and state.message else ""
            raise StageRunFailed(f"night {params.night.id}: stage {stage} (flow run {flow_run.id}) ended "
                                 f"{name}{message}; later stages were not started")
        summaries[stage] = _stage_run_summary(flow_run)
        logger.info("%s: flow run %s completed", stage, flow_run.id)
    return summaries


def scheduled_night_id(params: Params) -> str:
    """A scheduled run names its night after the local date it starts on."""
    return dt.datetime.now(ZoneInfo(params.night.timezone)).date().isoformat()


def build_params(root: str, params_file: str, overrides: list[str], night: str | None, inbox: str | None,
                 model: str | None) -> Params:
    values = parse_overrides(overrides)
    for key, value in (("night.inbox", inbox), ("prepare_model.name", model), ("night.id", night)):
        if value is not None:
            values[key] = value
    ws = Workspace.from_env(root)
    params = load_params(ws.root / params_file, values)
    if night is None and "night.id" not in values:
        params.night.id = scheduled_night_id(params)
    return params


@flow(name="nightly-sleep", log_prints=True)
def nightly_sleep(night: str | None = None, inbox: str | None = None, model: str | None = None,
                  root: str = ".", params_file: str = "params.yaml", overrides: list[str] | None = None
                  ) -> dict[str, Any]:
    """One night: collect -> validate -> seed -> dream -> evaluate -> promote (after preparing the base model once)."""
    params = build_params(root, params_file, overrides or [], night, inbox, model)
    ws = Workspace.from_env(root)
    logger = get_run_logger()
    if night_finished(params, ws):
        logger.info("night %s is already finished: nothing to do", params.night.id)
        return {}
    logger.info("night %s: model %s, inbox %s", params.night.id, params.prepare_model.name, params.night.inbox)
    if params.infrastructure.mode == "pools":
        return run_stages_on_pools(params, ws)
    return {stage: STAGE_TASKS[stage](stage, params.to_dict(), str(ws.root)) for stage in STAGES}


def deployment(root: str = ".", params_file: str = "params.yaml"):
    """The nightly cron deployment (what `serve` registers); no night id, so each run is named by its date."""
    params = load_params(Workspace.from_env(root).root / params_file)
    return nightly_sleep.to_deployment(
        name="nightly",
        schedules=[Cron(params.night.cron, timezone=params.night.timezone)],
        parameters={"root": str(Workspace.from_env(root).root), "params_file": params_file},
        description="lmsleep: consolidate the day's memories into the model, every night.",
        tags=["lmsleep", "nightly"],
    )


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "run"
    if command == "serve":
        from prefect import serve

        serve(deployment())
    elif command == "run":
        nightly_sleep()
    else:
        sys.exit(f"usage: python flows/nightly.py [serve|run]; got {command!r}")
