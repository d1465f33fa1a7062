"""Scale-out: every stage as its own deployment on a Prefect work pool, chosen per stage by params.yaml.

    python flows/deployments.py apply     # create the work pools (if missing), the per-stage deployments and the
                                          # zombie automation against $PREFECT_API_URL

With `infrastructure.mode: pools` the nightly flow (flows/nightly.py) runs each stage as a flow run of deployment
`lmsleep-stage/<stage>` (`run_deployment`) instead of as a task in its own process. Each deployment sits on the pool
`infrastructure.stage_pools[<stage>]` names:

- `process` -> `infrastructure.process_pool`: a process worker on one machine (`prefect worker start --pool ...`);
- `kubernetes` -> `infrastructure.kubernetes_pool`: a Kubernetes worker; the pool's base job template is
  infra/prefect/kubernetes-base-job-template.json and `infrastructure.stage_job_variables[<stage>]` places the stage's
  pod (cpu/gpu node class, GPU toleration and `nvidia.com/gpu` request, cpu/memory) and mounts the shared workspace
  (PVC lmsleep-workspace, EFS) at `infrastructure.kubernetes_root` (/workspace), the root every such stage runs with.

Every stage run gets `PREFECT_FLOWS_HEARTBEAT_FREQUENCY=<infrastructure.heartbeat_seconds>` in its env, and `apply`
creates one automation that marks an lmsleep flow run Crashed only after `crash_after_silent_seconds` without a
heartbeat, so a long GPU stage that is alive is never taken for a zombie (infra/README.md, "Work pools").
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from lmsleep.env import set_offline_env

set_offline_env()

from prefect import flow  # noqa: E402
from prefect.client.orchestration import SyncPrefectClient, get_client  # noqa: E402
from prefect.client.schemas.actions import WorkPoolCreate  # noqa: E402
from prefect.client.schemas.objects import StateType, WorkPool  # noqa: E402
from prefect.deployments.runner import EntrypointType, RunnerDeployment  # noqa: E402
from prefect.exceptions import ObjectNotFound  # noqa: E402

from flows.nightly import STAGE_TASKS  # noqa: E402
from lmsleep.config import InfrastructureConfig, Params, Workspace, load_params, params_from_dict  # noqa: E402
from lmsleep.pipeline import STAGES  # noqa: E402

STAGE_FLOW_NAME = "lmsleep-stage"
TAG = "lmsleep"  # on every lmsleep deployment, hence on every flow run the zombie automation watches
ZOMBIE_AUTOMATION = "lmsleep: crash flow runs that stopped heartbeating"
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
POOL_TYPES = {"process": "process", "kubernetes": "kubernetes"}  # stage_pools value -> Prefect worker type
TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "infra" / "prefect"
KUBERNETES_TEMPLATE = TEMPLATE_DIR / "kubernetes-base-job-template.json"


# ---------------------------------------------------------------- the stage flow


@flow(name=STAGE_FLOW_NAME, log_prints=True)
def stage_flow(stage: str, params_dict: dict[str, Any] | None = None, root: str = ".") -> dict[str, Any]:
    """One stage as its own flow run (what deployment lmsleep-stage/<stage> runs on its pool).

    The nightly flow passes the night's full params; a manual run without them reads `<root>/params.yaml`. The stage
    runs as the same task as in local mode, so its retries (and never retrying a NightStopped) stay the same.
    """
    if stage not in STAGE_TASKS:
        raise ValueError(f"unknown stage '{stage}'; stages: {', '.join(STAGES)}")
    if params_dict is None:
        params_dict = load_params(Workspace.from_env(root).root / "params.yaml").to_dict()
    params_from_dict(params_dict)  # fail here, not inside the task's retries, if the params are wrong
    return STAGE_TASKS[stage](stage, params_dict, root)


# ---------------------------------------------------------------- where each stage runs (params -> pool, job variables)


def known_stages() -> set[str]:
    """Stages params may name: the pipeline's, plus those the defaults already place (e.g. `dream`, to come)."""
    defaults = InfrastructureConfig()
    return set(STAGES) | set(defaults.stage_pools) | set(defaults.stage_job_variables)


def _check_stage_keys(infra: InfrastructureConfig) -> None:
    for key in ("stage_pools", "stage_job_variables"):
        unknown = set(getattr(infra, key)) - known_stages()
        if unknown:
            raise ValueError(f"params: infrastructure.{key} names unknown stage(s) {sorted(unknown)}; "
                             f"stages: {', '.join(STAGES)}")


def stage_pool_kind(params: Params, stage: str) -> str:
    """'process' or 'kubernetes' (a stage params do not place runs on the process pool)."""
    _check_stage_keys(params.infrastructure)
    kind = params.infrastructure.stage_pools.get(stage, "process")
    if kind not in POOL_TYPES:
        raise ValueError(f"params: infrastructure.stage_pools.{stage} must be 'process' or 'kubernetes', got {kind!r}")
    return kind


def stage_pool(params: Params, stage: str) -> str:
    """Name of the work pool the stage's deployment sits on."""
    infra = params.infrastructure
    return infra.kubernetes_pool if stage_pool_kind(params, stage) == "kubernetes" else infra.process_pool


def stage_root(params: Params, stage: str, root: str | Path) -> str:
    """Workspace root the stage's flow run works in (pods see the shared workspace at `kubernetes_root`)."""
    if stage_pool_kind(params, stage) == "kubernetes" and params.infrastructure.kubernetes_root:
        return params.infrastructure.kubernetes_root
    return str(Workspace.from_env(str(root)).root)


def stage_job_variables(params: Params, stage: str, root: str | Path = ".") -> dict[str, Any]:
    """Job variables of one stage's flow run: placement on the kubernetes pool, working dir on the process pool.

    Both get the heartbeat frequency in `env` (it wins over an env entry in params: the zombie automation's window is
    checked against it). On Kubernetes, `env` is merged over the pool's env defaults (AWS_REGION, ... from terraform).
    """
    infra = params.infrastructure
    heartbeat = {HEARTBEAT_ENV: str(infra.heartbeat_seconds)}
    if stage_pool_kind(params, stage) == "process":
        return {"env": heartbeat, "working_dir": stage_root(params, stage, root)}
    variables = copy.deepcopy(infra.stage_job_variables.get(stage, {}))
    _check_workspace_mount(infra, stage, variables)
    variables["env"] = {**variables.get("env", {}), **heartbeat}
    if infra.image and "image" not in variables:
        variables["image"] = infra.image
    return variables


def _check_workspace_mount(infra: InfrastructureConfig, stage: str, variables: dict[str, Any]) -> None:
    """A Kubernetes stage that mounts volumes must mount one at (or above) kubernetes_root, or it would write its
    files to the pod's own disk, where the next stage's pod never sees them. Without `volume_mounts` the pool's
    defaults apply (terraform's prefect_job_variables mount the workspace PVC)."""
    root = infra.kubernetes_root.rstrip("/")
    mounts = variables.get("volume_mounts")
    if not root or mounts is None:
        return
    paths = [str(m.get("mountPath", "")).rstrip("/") for m in mounts if isinstance(m, dict)]
    if not any(root == p or root.startswith(p + "/") for p in paths):
        raise ValueError(f"params: infrastructure.stage_job_variables.{stage}.volume_mounts mount nothing at "
                         f"kubernetes_root '{infra.kubernetes_root}' (mounts: {paths}): the stage's files would not "
                         f"reach the other stages")


# ---------------------------------------------------------------- work pools


def kubernetes_base_job_template(job_variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """infra/prefect/kubernetes-base-job-template.json, with variable defaults from terraform's prefect_job_variables
    output ({"namespace": ..., "service_account_name": ..., "env": {...}}) when given."""
    template = json.loads(KUBERNETES_TEMPLATE.read_text(encoding="utf-8"))
    properties = template["variables"]["properties"]
    for name, value in (job_variables or {}).items():
        if name not in properties:
            raise ValueError(f"kubernetes job variable '{name}' is not in {KUBERNETES_TEMPLATE.name}; "
                             f"known: {sorted(properties)}")
        properties[name]["default"] = value
    return template


def process_base_job_template() -> dict[str, Any]:
    from prefect.workers.process import ProcessWorker

    return ProcessWorker.get_default_base_job_template()


def _ensure_pool(client: SyncPrefectClient, name: str, pool_type: str, template: dict[str, Any]) -> WorkPool:
    try:
        pool = client.read_work_pool(name)
    except ObjectNotFound:
        return client.create_work_pool(WorkPoolCreate(name=name, type=pool_type, base_job_template=template,
                                                      description=f"lmsleep stage flow runs ({pool_type})"))
    if pool.type != pool_type:
        raise ValueError(f"work pool '{name}' exists with type '{pool.type}', lmsleep needs '{pool_type}': "
                         f"rename infrastructure.{pool_type}_pool or delete the pool")
    return pool  # existing pools keep their template (operators may have edited it)


def ensure_work_pools(client: SyncPrefectClient | None = None, params: Params | None = None,
                      kubernetes_job_variables: dict[str, Any] | None = None) -> dict[str, WorkPool]:
    """Create the process pool and the Kubernetes pool (with our base job template) where missing.

    Returns {"process": pool, "kubernetes": pool}. An existing pool is left as it is; one of another type is an error.
    """
    infra = (params or Params()).infrastructure
    if client is None:
        with get_client(sync_client=True) as own_client:
            return ensure_work_pools(own_client, params, kubernetes_job_variables)
    return {
        "process": _ensure_pool(client, infra.process_pool, "process", process_base_job_template()),
        "kubernetes": _ensure_pool(client, infra.kubernetes_pool, "kubernetes",
                                   kubernetes_base_job_template(kubernetes_job_variables)),
    }


# ---------------------------------------------------------------- deployments


def stage_deployments(params: Params, root: str | Path = ".") -> list[RunnerDeployment]:
    """One deployment per stage (`lmsleep-stage/<stage>`), on the pool and with the job variables params choose."""
    _check_stage_keys(params.infrastructure)
    deployments = []
    for stage in STAGES:
        kind = stage_pool_kind(params, stage)
        deployments.append(stage_flow.to_deployment(
            name=stage,
            work_pool_name=stage_pool(params, stage),
            job_variables=stage_job_variables(params, stage, root),
            parameters={"stage": stage, "root": stage_root(params, stage, root)},
            entrypoint_type=EntrypointType.MODULE_PATH,  # flows.deployments.stage_flow: any cwd, any image
            description=f"lmsleep: the {stage} stage of a night, as its own flow run ({kind} pool).",
            tags=[TAG, "stage", f"pool:{kind}"],
        ))
    return deployments


def check_stage_deployments(params: Params, client: SyncPrefectClient | None = None) -> None:
    """Before a night in mode 'pools': every stage deployment exists and sits on the pool params choose now."""
    if client is None:
        with get_client(sync_client=True) as own_client:
            return check_stage_deployments(params, own_client)
    problems = []
    for stage in STAGES:
        wanted = stage_pool(params, stage)
        try:
            deployment = client.read_deployment_by_name(f"{STAGE_FLOW_NAME}/{stage}")
        except ObjectNotFound:
            problems.append(f"{STAGE_FLOW_NAME}/{stage} does not exist")
            continue
        if deployment.work_pool_name != wanted:
            problems.append(f"{STAGE_FLOW_NAME}/{stage} is on pool '{deployment.work_pool_name}', params say "
                            f"'{wanted}'")
    if problems:
        raise RuntimeError("stage deployments do not match params.yaml (run `python flows/deployments.py apply`): "
                           + "; ".join(problems))


# ---------------------------------------------------------------- heartbeats: the zombie automation


def zombie_automation(params: Params):
    """Mark an lmsleep flow run Crashed once it has been silent `crash_after_silent_seconds` after a heartbeat.

    Armed by a heartbeat, reset by the next heartbeat or a terminal state: a run still waiting for its pod (Scheduled,
    Late, Pending: no heartbeat yet) is never touched, and a live run, however long, keeps resetting it.
    """
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    infra = params.infrastructure
    return AutomationCore(
        name=ZOMBIE_AUTOMATION,
        description=(f"Flow runs tagged '{TAG}' heartbeat every {infra.heartbeat_seconds} s "
                     f"({HEARTBEAT_ENV}); {infra.crash_after_silent_seconds} s of silence means the process died."),
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification({"prefect.resource.role": "tag",
                                                 "prefect.resource.id": f"prefect.tag.{TAG}"}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=infra.crash_after_silent_seconds),
        ),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"no heartbeat for {infra.crash_after_silent_seconds} s: the flow run's process is gone",
        )],
    )


def ensure_zombie_automation(params: Params, client: SyncPrefectClient | None = None) -> Any:
    """Create (or update in place) the one automation of that name; returns its id."""
    if client is None:
        with get_client(sync_client=True) as own_client:
            return ensure_zombie_automation(params, own_client)
    automation = zombie_automation(params)
    existing = client.read_automations_by_name(ZOMBIE_AUTOMATION)
    if existing:
        client.update_automation(existing[0].id, automation)
        return existing[0].id
    return client.create_automation(automation)


# ---------------------------------------------------------------- apply


def apply(root: str = ".", params_file: str = "params.yaml", kubernetes_job_variables: dict[str, Any] | None = None,
          automation: bool = True) -> dict[str, Any]:
    """Pools (if missing), one deployment per stage and the zombie automation, against the current PREFECT_API_URL."""
    ws = Workspace.from_env(root)
    params = load_params(ws.root / params_file)
    with get_client(sync_client=True) as client:
        pools = ensure_work_pools(client, params, kubernetes_job_variables)
        deployment_ids = {d.name: d.apply() for d in stage_deployments(params, ws.root)}
        automation_id = ensure_zombie_automation(params, client) if automation else None
    return {"pools": {kind: pool.name for kind, pool in pools.items()}, "deployments": deployment_ids,
            "automation": automation_id}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python flows/deployments.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("apply", help="register work pools, stage deployments and the zombie automation")
    cmd.add_argument("--root", default=".", help="workspace root (default: .)")
    cmd.add_argument("--params-file", default="params.yaml")
    cmd.add_argument("--kubernetes-job-variables", metavar="FILE",
                     help="JSON of the pool's variable defaults, e.g. "
                          "`terraform output -raw prefect_job_variables > FILE` (used only when creating the pool)")
    cmd.add_argument("--no-automation", action="store_true", help="do not create/update the zombie automation")
    args = parser.parse_args(argv)
    job_variables = None
    if args.kubernetes_job_variables:
        job_variables = json.loads(Path(args.kubernetes_job_variables).read_text(encoding="utf-8"))
    done = apply(args.root, args.params_file, job_variables, automation=not args.no_automation)
    print(json.dumps(done, indent=2, default=str))


if __name__ == "__main__":
    # Through the importable module, so stage_flow's entrypoint is flows.deployments.stage_flow, not __main__.
    from flows.deployments import main as module_main

    module_main(sys.argv[1:])
