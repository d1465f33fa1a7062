"""Scale-out (flows/deployments.py): work pools, per-stage deployments placed by params, the nightly flow in 'pools'
mode, the Kubernetes base job template and the zombie automation. No worker runs here: `run_deployment` is faked."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from types import SimpleNamespace

import pytest

from lmsleep.config import InfrastructureConfig, Params, params_from_dict, render_params_yaml
from lmsleep.pipeline import STAGES

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
WORKSPACE_VOLUMES = [{"name": "workspace", "persistentVolumeClaim": {"claimName": "lmsleep-workspace"}}]
WORKSPACE_MOUNTS = [{"name": "workspace", "mountPath": "/workspace"}]


def pools_params(**stage_pools: str) -> Params:
    """Params in mode 'pools' with pool names unique to the test (the Prefect test server is shared by the session)."""
    params = Params()
    infra = params.infrastructure
    infra.mode = "pools"
    suffix = uuid.uuid4().hex[:8]
    infra.process_pool, infra.kubernetes_pool = f"proc-{suffix}", f"k8s-{suffix}"
    infra.stage_pools.update(stage_pools)
    return params


def write_params(root, params: Params) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(render_params_yaml(params), encoding="utf-8")


def render_pod(template: dict, job_variables: dict) -> dict:
    """The Kubernetes Job a worker would submit for these job variables (Prefect's own templating and validation)."""
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, job_variables))
    return config.job_manifest["spec"]["template"]["spec"]


# ---------------------------------------------------------------- params


def test_infrastructure_params_defaults_and_validation() -> None:
    infra = Params().infrastructure
    assert infra.mode == "local"  # today's behaviour unless params say otherwise
    assert set(infra.stage_pools) >= set(STAGES) and set(infra.stage_pools.values()) == {"process"}
    assert infra.stage_job_variables["seed"]["tolerations"] == [GPU_TOLERATION]
    assert infra.stage_job_variables["seed"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert infra.stage_job_variables["seed"]["node_selector"] == {"lmsleep/stage-class": "gpu"}
    assert infra.stage_job_variables["dream"] == infra.stage_job_variables["seed"]
    for stage in ("prepare_model", "collect", "validate", "evaluate", "promote"):
        assert infra.stage_job_variables[stage]["node_selector"] == {"lmsleep/stage-class": "cpu"}
        assert "tolerations" not in infra.stage_job_variables[stage]
        assert "nvidia.com/gpu" not in json.dumps(infra.stage_job_variables[stage])
    # every stage pod mounts the shared workspace (EFS PVC) where its flow runs: kubernetes_root
    assert infra.kubernetes_root == "/workspace"
    for stage, variables in infra.stage_job_variables.items():
        assert variables["volumes"] == WORKSPACE_VOLUMES, stage
        assert variables["volume_mounts"] == WORKSPACE_MOUNTS, stage
    assert infra.stage_timeout_seconds == 0  # no limit unless params set one
    # defaults are deep copies: editing one Params never leaks into another
    infra.stage_job_variables["seed"]["resources"]["limits"]["nvidia.com/gpu"] = "8"
    assert Params().infrastructure.stage_job_variables["seed"]["resources"]["limits"]["nvidia.com/gpu"] == "1"

    loaded = params_from_dict({"infrastructure": {"mode": "pools", "stage_pools": {"seed": "kubernetes"}}})
    assert loaded.infrastructure.stage_pools == {"seed": "kubernetes"}
    with pytest.raises(ValueError, match="infrastructure.stage_pools must be dict"):
        params_from_dict({"infrastructure": {"stage_pools": ["seed"]}})
    with pytest.raises(ValueError, match="infrastructure.mode must be 'local' or 'pools'"):
        params_from_dict({"infrastructure": {"mode": "cloud"}})
    with pytest.raises(ValueError, match="'process' or 'kubernetes'"):
        params_from_dict({"infrastructure": {"stage_pools": {"seed": "gpu"}}})
    with pytest.raises(ValueError, match="stage_timeout_seconds must be >= 0"):
        InfrastructureConfig(stage_timeout_seconds=-1)
    with pytest.raises(ValueError, match="heartbeat_seconds must be >= 30"):
        InfrastructureConfig(heartbeat_seconds=10)
    with pytest.raises(ValueError, match="crash_after_silent_seconds must be >= 3 x heartbeat_seconds"):
        InfrastructureConfig(heartbeat_seconds=60, crash_after_silent_seconds=120)


def test_stage_job_variables_follow_params(tmp_path) -> None:
    from flows.deployments import HEARTBEAT_ENV, stage_job_variables, stage_pool, stage_root

    params = pools_params(seed="kubernetes", collect="kubernetes")
    infra = params.infrastructure
    infra.image, infra.kubernetes_root, infra.heartbeat_seconds = "registry.example/lmsleep:1", "/workspace", 45

    seed = stage_job_variables(params, "seed", tmp_path)
    assert stage_pool(params, "seed") == infra.kubernetes_pool
    assert seed["node_selector"] == {"lmsleep/stage-class": "gpu"}
    assert seed["tolerations"] == [GPU_TOLERATION]
    assert seed["resources"]["requests"]["nvidia.com/gpu"] == seed["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert seed["env"] == {HEARTBEAT_ENV: "45"}
    assert seed["image"] == "registry.example/lmsleep:1"
    assert stage_root(params, "seed", tmp_path) == "/workspace"

    collect = stage_job_variables(params, "collect", tmp_path)
    assert collect["node_selector"] == {"lmsleep/stage-class": "cpu"} and "tolerations" not in collect

    evaluate = stage_job_variables(params, "evaluate", tmp_path)  # still on the process pool
    assert stage_pool(params, "evaluate") == infra.process_pool
    assert evaluate == {"env": {HEARTBEAT_ENV: "45"}, "working_dir": str(tmp_path.resolve())}

    infra.stage_job_variables["seed"]["env"] = {HEARTBEAT_ENV: "600", "EXTRA": "1"}
    assert stage_job_variables(params, "seed", tmp_path)["env"] == {HEARTBEAT_ENV: "45", "EXTRA": "1"}
    assert params.infrastructure.stage_job_variables["seed"]["env"][HEARTBEAT_ENV] == "600"  # params not mutated

    # a stage whose mounts miss kubernetes_root would write where the next stage's pod cannot read
    infra.stage_job_variables["seed"]["volume_mounts"] = [{"name": "workspace", "mountPath": "/data"}]
    with pytest.raises(ValueError, match="seed.volume_mounts mount nothing at kubernetes_root '/workspace'"):
        stage_job_variables(params, "seed", tmp_path)
    infra.stage_job_variables["seed"]["volume_mounts"] = [{"name": "workspace", "mountPath": "/"}]
    assert stage_job_variables(params, "seed", tmp_path)["volume_mounts"][0]["mountPath"] == "/"  # above the root
    del infra.stage_job_variables["seed"]["volume_mounts"]  # none: the pool's defaults (terraform) apply
    assert "volume_mounts" not in stage_job_variables(params, "seed", tmp_path)

    infra.stage_pools["sede"] = "kubernetes"
    with pytest.raises(ValueError, match="unknown stage"):
        stage_pool(params, "seed")


# ---------------------------------------------------------------- the Kubernetes base job template


def test_kubernetes_template_is_a_valid_prefect_template(prefect_harness) -> None:
    from prefect.utilities.schema_tools import is_valid_schema, validate
    from prefect_kubernetes.worker import KubernetesWorker

    from flows.deployments import KUBERNETES_TEMPLATE, kubernetes_base_job_template, stage_job_variables

    template = json.loads(KUBERNETES_TEMPLATE.read_text())
    assert set(template) == {"job_configuration", "variables"}
    schema = template["variables"]
    is_valid_schema(schema, preprocess=False)
    placeholders = set(re.findall(r"{{\s*(\w+)\s*}}", json.dumps(template["job_configuration"])))
    assert placeholders <= set(schema["properties"])  # what the server checks when a pool is created
    assert {"node_selector", "tolerations", "resources", "image", "namespace", "service_account_name",
            "env"} <= placeholders
    # Prefect's own variables are all still there, except the four cpu/memory ones `resources` replaces
    default = KubernetesWorker.get_default_base_job_template()["variables"]["properties"]
    assert set(default) - set(schema["properties"]) == {"cpu_request", "cpu_limit", "memory_request", "memory_limit"}

    params = pools_params(seed="kubernetes")
    seed_vars = stage_job_variables(params, "seed")
    validate(seed_vars, schema, raise_on_error=True, preprocess=True, ignore_required=True)
    with pytest.raises(Exception, match="resources|additional"):
        validate({"resources": {"gpus": 1}}, schema, raise_on_error=True, preprocess=True, ignore_required=True)

    pod = render_pod(kubernetes_base_job_template({"namespace": "lmsleep-dev"}), seed_vars)
    assert pod["nodeSelector"] == {"lmsleep/stage-class": "gpu"}
    assert pod["tolerations"] == [GPU_TOLERATION]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"

    cpu_pod = render_pod(template, stage_job_variables(pools_params(collect="kubernetes"), "collect"))
    assert cpu_pod["nodeSelector"] == {"lmsleep/stage-class": "cpu"} and cpu_pod["tolerations"] == []
    assert "nvidia.com/gpu" not in json.dumps(cpu_pod)

    with pytest.raises(ValueError, match="not in kubernetes-base-job-template.json"):
        kubernetes_base_job_template({"namespaces": "x"})


# ---------------------------------------------------------------- pools and deployments on the test server


def test_ensure_work_pools_creates_both_pools_once(prefect_harness) -> None:
    from prefect import get_client

    from flows.deployments import ensure_work_pools

    params = pools_params()
    tf_job_variables = {"namespace": "lmsleep-dev", "service_account_name": "prefect-worker",
                        "env": {"AWS_REGION": "eu-west-1", "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true"}}
    with get_client(sync_client=True) as client:
        pools = ensure_work_pools(client, params, tf_job_variables)
        again = ensure_work_pools(client, params)  # idempotent: existing pools are left as they are
        stored = client.read_work_pool(params.infrastructure.kubernetes_pool)
        assert {kind: pool.type for kind, pool in pools.items()} == {"process": "process", "kubernetes": "kubernetes"}
        assert {kind: pool.id for kind, pool in again.items()} == {kind: pool.id for kind, pool in pools.items()}
        properties = stored.base_job_template["variables"]["properties"]
        assert properties["namespace"]["default"] == "lmsleep-dev"
        assert properties["env"]["default"]["AWS_REGION"] == "eu-west-1"
        assert "{{ tolerations }}" in json.dumps(stored.base_job_template["job_configuration"])

        clash = pools_params()
        clash.infrastructure.kubernetes_pool = params.infrastructure.process_pool
        with pytest.raises(ValueError, match="exists with type 'process'"):
            ensure_work_pools(client, clash)


def test_stage_deployments_sit_on_the_pools_params_choose(prefect_harness, tmp_path) -> None:
    from prefect import get_client

    from flows.deployments import STAGE_FLOW_NAME, ensure_work_pools, stage_deployments

    params = pools_params(seed="kubernetes", dream="kubernetes", evaluate="kubernetes")
    infra = params.infrastructure
    with get_client(sync_client=True) as client:
        ensure_work_pools(client, params)
        for deployment in stage_deployments(params, tmp_path):
            deployment.apply()
        stored = {stage: client.read_deployment_by_name(f"{STAGE_FLOW_NAME}/{stage}") for stage in STAGES}
        on_kubernetes = ("seed", "dream", "evaluate")
        assert {stage: d.work_pool_name for stage, d in stored.items()} == {
            stage: infra.kubernetes_pool if stage in on_kubernetes else infra.process_pool for stage in STAGES}
        assert all(d.entrypoint == "flows.deployments.stage_flow" for d in stored.values())
        assert all(d.parameters["stage"] == stage for stage, d in stored.items())
        assert all("lmsleep" in d.tags for d in stored.values())
        seed = stored["seed"].job_variables
        assert seed["tolerations"] == [GPU_TOLERATION]
        assert seed["resources"]["requests"]["nvidia.com/gpu"] == "1"
        assert seed["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
        assert stored["evaluate"].job_variables["node_selector"] == {"lmsleep/stage-class": "cpu"}
        assert stored["collect"].job_variables["working_dir"] == str(tmp_path.resolve())

        # the pod the worker would start for seed, from what the server stored (pool template + deployment)
        pool = client.read_work_pool(infra.kubernetes_pool)
        pod = render_pod(pool.base_job_template, seed)
        assert pod["tolerations"] == [GPU_TOLERATION]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"

        # seed writes the adapter, evaluate (another pod, another node) reads it: both pods mount the same PVC at
        # the same path, and both stage runs use that path as their workspace root
        evaluate_pod = render_pod(pool.base_job_template, stored["evaluate"].job_variables)
        assert pod["volumes"] == evaluate_pod["volumes"] == WORKSPACE_VOLUMES
        assert pod["containers"][0]["volumeMounts"] == evaluate_pod["containers"][0]["volumeMounts"] == \
            WORKSPACE_MOUNTS
        assert stored["seed"].parameters["root"] == stored["evaluate"].parameters["root"] == "/workspace"
        assert stored["collect"].parameters["root"] == str(tmp_path.resolve())  # process pool: the local root

        # params move seed to the process pool: applying again moves its deployment
        infra.stage_pools["seed"] = "process"
        for deployment in stage_deployments(params, tmp_path):
            deployment.apply()
        moved = client.read_deployment_by_name(f"{STAGE_FLOW_NAME}/seed")
        assert moved.id == stored["seed"].id
        assert moved.work_pool_name == infra.process_pool
        assert "tolerations" not in moved.job_variables


def test_apply_cli_registers_pools_deployments_and_automation(prefect_harness, tmp_path, capsys) -> None:
    from prefect import get_client

    from flows.deployments import STAGE_FLOW_NAME, ZOMBIE_AUTOMATION, main

    params = pools_params(seed="kubernetes")
    write_params(tmp_path, params)
    (tmp_path / "tf.json").write_text(json.dumps({"namespace": "lmsleep-prod"}))
    main(["apply", "--root", str(tmp_path), "--kubernetes-job-variables", str(tmp_path / "tf.json")])
    done = json.loads(capsys.readouterr().out)
    assert done["pools"] == {"process": params.infrastructure.process_pool,
                             "kubernetes": params.infrastructure.kubernetes_pool}
    assert set(done["deployments"]) == set(STAGES)
    with get_client(sync_client=True) as client:
        assert client.read_deployment_by_name(f"{STAGE_FLOW_NAME}/seed").work_pool_name == \
            params.infrastructure.kubernetes_pool
        pool = client.read_work_pool(params.infrastructure.kubernetes_pool)
        assert pool.base_job_template["variables"]["properties"]["namespace"]["default"] == "lmsleep-prod"
        assert [a.name for a in client.read_automations_by_name(ZOMBIE_AUTOMATION)] == [ZOMBIE_AUTOMATION]


def test_zombie_automation_waits_crash_after_silent_seconds(prefect_harness) -> None:
    from prefect import get_client

    from flows.deployments import ZOMBIE_AUTOMATION, ensure_zombie_automation

    params = Params()
    params.infrastructure.heartbeat_seconds, params.infrastructure.crash_after_silent_seconds = 60, 900
    with get_client(sync_client=True) as client:
        first = ensure_zombie_automation(params, client)
        params.infrastructure.crash_after_silent_seconds = 1200
        assert ensure_zombie_automation(params, client) == first  # updated in place, never duplicated
        (stored,) = client.read_automations_by_name(ZOMBIE_AUTOMATION)
    trigger = stored.trigger
    assert trigger.within.total_seconds() == 1200
    assert trigger.after == {"prefect.flow-run.heartbeat"}
    assert {"prefect.flow-run.heartbeat", "prefect.flow-run.Completed"} <= trigger.expect
    assert stored.actions[0].state.value == "CRASHED"


# ---------------------------------------------------------------- the nightly flow in 'pools' mode


class FakeRunDeployment:
    """Stands in for prefect.deployments.run_deployment: records calls, returns finished flow-run-like objects."""

    def __init__(self, fail_at: str | None = None, hang_at: str | None = None) -> None:
        self.calls: list[dict] = []
        self.fail_at = fail_at
        self.hang_at = hang_at  # still Running when run_deployment's timeout is up

    def __call__(self, name, parameters=None, job_variables=None, **kwargs):
        from prefect.states import Completed, Failed, Running

        stage = name.split("/", 1)[1]
        self.calls.append({"name": name, "parameters": parameters, "job_variables": job_variables, **kwargs})
        state = (Failed(message="CUDA out of memory") if stage == self.fail_at
                 else Running() if stage == self.hang_at
                 else Completed(data={"stage": stage, "rows": len(self.calls)}))
        return SimpleNamespace(id=uuid.uuid4(), name=f"run-{stage}", state=state)


@pytest.fixture
def pools_night(prefect_harness, tmp_path, monkeypatch):
    """A workspace whose params say mode 'pools' (seed on Kubernetes), with pools and stage deployments applied."""
    import flows.nightly
    from flows.deployments import apply

    params = pools_params(seed="kubernetes")
    write_params(tmp_path, params)
    apply(str(tmp_path), automation=False)
    fake = FakeRunDeployment()
    monkeypatch.setattr(flows.nightly, "run_deployment", fake)
    return SimpleNamespace(root=tmp_path, params=params, fake=fake)


def test_nightly_pools_mode_runs_each_stage_deployment_in_order(pools_night) -> None:
    from flows.nightly import nightly_sleep

    summaries = nightly_sleep(night="pools-n1", root=str(pools_night.root))

    calls = pools_night.fake.calls
    assert [c["name"] for c in calls] == [f"lmsleep-stage/{stage}" for stage in STAGES]
    assert list(summaries) == list(STAGES)
    assert summaries["seed"]["stage"] == "seed" and "flow_run_id" in summaries["seed"]
    for call, stage in zip(calls, STAGES):
        assert call["parameters"]["stage"] == stage
        # seed's pod works in the shared workspace it mounts; the process-pool stages in the night's root
        assert call["parameters"]["root"] == ("/workspace" if stage == "seed" else str(pools_night.root.resolve()))
        assert params_from_dict(call["parameters"]["params_dict"]).night.id == "pools-n1"
        assert call["timeout"] is None  # long GPU stages: wait for the final state
        assert call["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
    seed = calls[STAGES.index("seed")]["job_variables"]
    assert seed["tolerations"] == [GPU_TOLERATION] and seed["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "tolerations" not in calls[STAGES.index("collect")]["job_variables"]


def test_a_failed_stage_run_stops_the_night(pools_night) -> None:
    from flows.nightly import StageRunFailed, nightly_sleep

    pools_night.fake.fail_at = "seed"
    state = nightly_sleep(night="pools-n2", root=str(pools_night.root), return_state=True)

    assert state.is_failed()
    assert [c["name"].split("/")[1] for c in pools_night.fake.calls] == list(STAGES[: STAGES.index("seed") + 1])
    with pytest.raises(StageRunFailed, match="stage seed .* ended Failed: CUDA out of memory"):
        state.result()


def test_a_stage_over_its_time_limit_fails_the_night(pools_night, monkeypatch) -> None:
    """infrastructure.stage_timeout_seconds: run_deployment waits that long; a stage still running is cancelled."""
    import flows.nightly
    from flows.nightly import StageRunFailed, nightly_sleep

    params = pools_night.params
    params.infrastructure.stage_timeout_seconds = 5400
    write_params(pools_night.root, params)
    cancelled = []
    monkeypatch.setattr(flows.nightly, "cancel_stage_run", lambda run_id, message: cancelled.append((run_id, message)))
    pools_night.fake.hang_at = "seed"

    state = nightly_sleep(night="pools-n4", root=str(pools_night.root), return_state=True)

    assert state.is_failed()
    calls = pools_night.fake.calls
    assert [c["name"].split("/")[1] for c in calls] == list(STAGES[: STAGES.index("seed") + 1])
    assert all(c["timeout"] == 5400 for c in calls)
    assert [message for _, message in cancelled] == ["lmsleep: stage_timeout_seconds=5400 exceeded"]
    with pytest.raises(StageRunFailed, match=r"stage seed .* exceeded infrastructure.stage_timeout_seconds=5400 "
                                             r"\(still Running\); cancelled it; later stages were not started"):
        state.result()


def test_pools_mode_refuses_deployments_on_other_pools(pools_night) -> None:
    """params moved a stage since the last `apply`: the night stops before starting anything."""
    from flows.nightly import nightly_sleep

    moved = pools_night.params
    moved.infrastructure.stage_pools["evaluate"] = "kubernetes"
    write_params(pools_night.root, moved)
    state = nightly_sleep(night="pools-n3", root=str(pools_night.root), return_state=True)
    assert state.is_failed()
    assert pools_night.fake.calls == []
    with pytest.raises(RuntimeError, match=r"flows/deployments.py apply.*lmsleep-stage/evaluate is on pool"):
        state.result()


def test_stage_flow_runs_the_stage_task(prefect_harness, monkeypatch, tmp_path) -> None:
    from prefect import task

    from flows.deployments import stage_flow
    from flows.nightly import STAGE_TASKS

    seen = []

    @task(persist_result=False)
    def fake_collect(stage, params_dict, root):
        seen.append((stage, params_dict["night"]["id"], root))
        return {"collected": 3}

    monkeypatch.setitem(STAGE_TASKS, "collect", fake_collect)
    params = Params()
    params.night.id = "n-stage"
    assert stage_flow("collect", params.to_dict(), str(tmp_path)) == {"collected": 3}
    write_params(tmp_path, params)  # a manual run without params reads <root>/params.yaml
    assert stage_flow("collect", None, str(tmp_path)) == {"collected": 3}
    assert seen == [("collect", "n-stage", str(tmp_path))] * 2
    assert stage_flow("dreaming", None, str(tmp_path), return_state=True).is_failed()
