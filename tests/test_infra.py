"""Static checks of the Terraform in infra/ (no terraform binary, no provider downloads: python-hcl2 only).

What they pin down: every .tf parses; each env tags everything through provider default_tags; the data bucket is
versioned, KMS-encrypted and fully blocks public access; nothing is public-read; the GPU node group is tainted and uses
an NVIDIA AMI; instance types come from variables; both envs wire all three modules and expose what the pipeline
reads (dvc_remote_url, stage_infrastructure); the stage pods share one encrypted, backed-up EFS workspace (NFS from
the nodes only) through the EFS CSI add-on and PVC lmsleep-workspace. checkov (make infra-check) covers the generic
security checks.
"""

from __future__ import annotations

import re
from pathlib import Path

import hcl2
import pytest

INFRA = Path(__file__).resolve().parents[1] / "infra"
MODULES = INFRA / "modules"
ENVS = ("dev", "prod")
MODULE_NAMES = ("storage", "compute", "prefect")
TF_FILES = sorted(INFRA.rglob("*.tf"))
WORKSPACE_MANIFEST = INFRA / "kubernetes" / "workspace.yaml"
OPTIONS = hcl2.SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)
GPU_AMI_TYPES = {"AL2023_x86_64_NVIDIA", "BOTTLEROCKET_x86_64_NVIDIA"}
# A literal EC2 instance type such as "g5.xlarge" or "m6i.large".
INSTANCE_TYPE_LITERAL = re.compile(r"^[a-z][a-z0-9-]*\.(nano|micro|small|medium|large|\d*xlarge|metal)$")


def parse(path: Path) -> dict:
    with path.open(encoding="utf-8") as handle:
        return hcl2.load(handle, serialization_options=OPTIONS)


def parse_dir(directory: Path) -> dict[str, list]:
    """All top-level blocks of a Terraform module (its *.tf files merged), keyed by block type."""
    merged: dict[str, list] = {}
    for path in sorted(directory.glob("*.tf")):
        for block_type, blocks in parse(path).items():
            merged.setdefault(block_type, []).extend(blocks)
    return merged


def labelled(blocks: list[dict]) -> dict[str, dict]:
    """{"name": body} for one-label blocks (module, variable, output, provider)."""
    return {name: body for block in blocks for name, body in block.items()}


def resources(module: dict, kind: str = "resource") -> dict[tuple[str, str], dict]:
    """{(type, name): body} for two-label blocks (resource, data)."""
    return {
        (rtype, name): body
        for block in module.get(kind, [])
        for rtype, named in block.items()
        for name, body in named.items()
    }


def only(items: dict, rtype: str) -> dict:
    found = [body for (kind, _), body in items.items() if kind == rtype]
    assert len(found) == 1, f"expected exactly one {rtype}, found {len(found)}"
    return found[0]


def walk(value, path=()):
    """Yield (key path, leaf) for every leaf of a parsed HCL structure."""
    if isinstance(value, dict):
        for key, sub in value.items():
            yield from walk(sub, path + (key,))
    elif isinstance(value, list):
        for sub in value:
            yield from walk(sub, path)
    else:
        yield path, value


@pytest.fixture(scope="module")
def storage() -> dict:
    return parse_dir(MODULES / "storage")


@pytest.fixture(scope="module")
def compute() -> dict:
    return parse_dir(MODULES / "compute")


@pytest.fixture(scope="module")
def node_groups(compute) -> dict[str, dict]:
    eks = labelled(compute["module"])["eks"]
    assert eks["source"] == "terraform-aws-modules/eks/aws"
    return eks["eks_managed_node_groups"]


def test_layout_is_complete():
    for name in MODULE_NAMES:
        for file in ("main.tf", "variables.tf", "outputs.tf", "versions.tf"):
            assert (MODULES / name / file).is_file(), f"modules/{name}/{file} missing"
    for env in ENVS:
        for file in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "terraform.tfvars.example"):
            assert (INFRA / "envs" / env / file).is_file(), f"envs/{env}/{file} missing"
    assert (INFRA / ".checkov.yaml").is_file()
    assert (INFRA / "README.md").is_file()
    assert WORKSPACE_MANIFEST.is_file()


@pytest.mark.parametrize("path", TF_FILES, ids=[str(p.relative_to(INFRA)) for p in TF_FILES])
def test_every_tf_file_parses(path):
    assert isinstance(parse(path), dict)


@pytest.mark.parametrize("env", ENVS)
def test_tfvars_example_parses_and_sets_required_inputs(env):
    values = parse(INFRA / "envs" / env / "terraform.tfvars.example")
    # Every env variable without a default must appear in the example.
    variables = labelled(parse_dir(INFRA / "envs" / env)["variable"])
    required = {name for name, body in variables.items() if "default" not in body}
    assert required <= set(values), f"tfvars example lacks {sorted(required - set(values))}"
    assert {"Owner", "CostCenter"} <= set(values["required_tags"])


@pytest.mark.parametrize("env", ENVS)
def test_versions_pin_terraform_and_aws_5(env):
    terraform = parse(INFRA / "envs" / env / "versions.tf")["terraform"][0]
    assert terraform["required_version"].startswith(">=")
    aws = terraform["required_providers"][0]["aws"]
    assert aws["source"] == "hashicorp/aws"
    assert re.fullmatch(r"~> 5\.\d+", aws["version"]), aws["version"]
    # The remote backend is documented but commented out until its state bucket exists.
    assert "backend" not in terraform
    assert '# backend "s3"' in (INFRA / "envs" / env / "versions.tf").read_text()


@pytest.mark.parametrize("env", ENVS)
def test_env_provider_sets_required_default_tags(env):
    env_dir = parse_dir(INFRA / "envs" / env)
    providers = [body for block in env_dir["provider"] for name, body in block.items() if name == "aws"]
    assert providers, "no aws provider block"
    for provider in providers:
        tags = provider["default_tags"][0]["tags"]
        assert "var.required_tags" in tags
        assert 'Project = "lmsleep"' in tags
        assert "Environment = var.environment" in tags
        assert 'ManagedBy = "terraform"' in tags
    variables = labelled(env_dir["variable"])
    assert variables["environment"]["default"] == env
    assert "default" not in variables["required_tags"], "required_tags must be set by the operator"


def test_modules_do_not_declare_providers():
    # Providers (and so default_tags) live in the envs only; a module provider block would bypass the tags.
    for name in MODULE_NAMES:
        assert "provider" not in parse_dir(MODULES / name), f"modules/{name} declares a provider"


def test_bucket_is_versioned(storage):
    res = resources(storage)
    versioning = only(res, "aws_s3_bucket_versioning")
    assert versioning["bucket"] == "${aws_s3_bucket.data.id}"
    assert versioning["versioning_configuration"][0]["status"] == "Enabled"


def test_bucket_is_kms_encrypted_with_rotating_key(storage):
    res = resources(storage)
    sse = only(res, "aws_s3_bucket_server_side_encryption_configuration")
    default = sse["rule"][0]["apply_server_side_encryption_by_default"][0]
    assert default["sse_algorithm"] == "aws:kms"
    assert default["kms_master_key_id"] == "${aws_kms_key.bucket.arn}"
    assert res[("aws_kms_key", "bucket")]["enable_key_rotation"] is True
    assert all(key["enable_key_rotation"] is True for (kind, _), key in res.items() if kind == "aws_kms_key")


def test_bucket_blocks_all_public_access(storage):
    res = resources(storage)
    block = only(res, "aws_s3_bucket_public_access_block")
    for flag in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"):
        assert block[flag] is True, flag
    ownership = only(res, "aws_s3_bucket_ownership_controls")
    assert ownership["rule"][0]["object_ownership"] == "BucketOwnerEnforced"


def test_bucket_policy_denies_insecure_transport(storage):
    document = resources(storage, "data")[("aws_iam_policy_document", "tls_only")]
    statement = document["statement"][0]
    assert statement["effect"] == "Deny"
    condition = statement["condition"][0]
    assert (condition["variable"], condition["values"]) == ("aws:SecureTransport", ["false"])
    assert only(resources(storage), "aws_s3_bucket_policy")["policy"] == "${data.aws_iam_policy_document.tls_only.json}"


def test_bucket_expires_noncurrent_versions(storage):
    lifecycle = only(resources(storage), "aws_s3_bucket_lifecycle_configuration")
    assert any("noncurrent_version_expiration" in rule and rule["status"] == "Enabled" for rule in lifecycle["rule"])


def test_nothing_is_public_read():
    for path in TF_FILES:
        for keys, leaf in walk(parse(path)):
            if keys and keys[-1] == "acl":
                assert not str(leaf).startswith("public-read"), f"{path}: acl = {leaf}"
        assert not re.search(r'acl\s*=\s*"public-read', path.read_text()), path


def test_gpu_node_group_is_tainted_labelled_and_nvidia(node_groups):
    gpu = node_groups["gpu"]
    assert gpu["taints"]["gpu"] == {"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}
    assert gpu["labels"] == {"lmsleep/stage-class": "gpu"}
    assert gpu["ami_type"] == "${var.gpu_ami_type}"
    assert gpu["capacity_type"] == "${var.gpu_capacity_type}"
    variables = labelled(parse_dir(MODULES / "compute")["variable"])
    assert variables["gpu_ami_type"]["default"] in GPU_AMI_TYPES
    for env in ENVS:
        env_vars = labelled(parse_dir(INFRA / "envs" / env)["variable"])
        assert env_vars["gpu_ami_type"]["default"] in GPU_AMI_TYPES
        assert env_vars["gpu_node_scaling"]["default"]["min"] == 0, "GPU group must scale to zero"
    # Every GPU-classed node group carries the taint, whatever it is called.
    for name, group in node_groups.items():
        if "NVIDIA" in str(group.get("ami_type", "")) or "gpu" in str(group.get("labels", {})):
            assert "nvidia.com/gpu" in str(group.get("taints")), f"GPU node group {name} is not tainted"


def test_cpu_node_group_is_untainted_standard(node_groups):
    cpu = node_groups["cpu"]
    assert "taints" not in cpu
    assert cpu["labels"] == {"lmsleep/stage-class": "cpu"}
    assert "NVIDIA" not in cpu["ami_type"]


def test_instance_types_come_from_variables(compute, node_groups):
    assert node_groups["cpu"]["instance_types"] == "${local.cpu_instance_types}"
    assert node_groups["gpu"]["instance_types"] == "${local.gpu_instance_types}"
    module_locals = {k: v for block in compute["locals"] for k, v in block.items()}
    assert "var.stage_instance_types" in module_locals["cpu_instance_types"]
    assert "var.stage_instance_types" in module_locals["gpu_instance_types"]
    instance = resources(compute)[("aws_instance", "single")]
    assert instance["instance_type"] == "${var.single_instance_type}"
    # No literal instance type in any resource, module call or local: only variable defaults may name one.
    for name in MODULE_NAMES + ("../envs/dev", "../envs/prod"):
        parsed = parse_dir(MODULES / name)
        for block_type in ("resource", "module", "locals", "data"):
            for keys, leaf in walk(parsed.get(block_type, [])):
                assert not (isinstance(leaf, str) and INSTANCE_TYPE_LITERAL.match(leaf)), (
                    f"{name}: literal instance type {leaf!r} at {'.'.join(keys)}"
                )


def test_single_mode_uses_a_deep_learning_ami_behind_mode_switch(compute):
    ami = resources(compute, "data")[("aws_ami", "dlami")]
    assert ami["count"] == '${local.is_single ? 1 : 0}'
    assert ami["owners"] == ["amazon"]
    variables = labelled(compute["variable"])
    assert "Deep Learning" in variables["dlami_name_filter"]["default"]
    assert "mode" in variables and "validation" in variables["mode"]
    assert labelled(compute["module"])["eks"]["count"] == "${local.is_eks ? 1 : 0}"
    assert resources(compute)[("aws_instance", "single")]["count"] == "${local.is_single ? 1 : 0}"


def test_stage_maps_cover_the_same_stages():
    for env in ENVS:
        variables = labelled(parse_dir(INFRA / "envs" / env)["variable"])
        classes = variables["stage_node_class"]["default"]
        types = variables["stage_instance_types"]["default"]
        assert set(classes) == set(types)
        assert {"collect", "validate", "seed", "evaluate", "promote"} <= set(classes)
        assert set(classes.values()) <= {"cpu", "gpu"}
        assert classes["seed"] == "gpu" and classes["collect"] == "cpu"


@pytest.mark.parametrize("env", ENVS)
def test_env_calls_all_three_modules(env):
    modules = labelled(parse_dir(INFRA / "envs" / env)["module"])
    for name in MODULE_NAMES:
        assert name in modules, f"envs/{env} does not call module {name}"
        assert modules[name]["source"] == f"../../modules/{name}"


@pytest.mark.parametrize("env", ENVS)
def test_env_outputs_what_the_pipeline_reads(env):
    outputs = labelled(parse_dir(INFRA / "envs" / env)["output"])
    for name in ("dvc_remote_url", "stage_infrastructure", "bucket_name", "prefect_results_url", "region",
                 "k8s_namespace", "k8s_service_account", "worker_role_arn"):
        assert name in outputs, f"envs/{env} lacks output {name}"
    assert outputs["dvc_remote_url"]["value"] == "${module.storage.dvc_remote_url}"
    assert outputs["stage_infrastructure"]["value"] == "${module.prefect.stage_infrastructure}"


def test_dvc_remote_url_and_stage_infrastructure_are_built_right():
    storage_outputs = labelled(parse_dir(MODULES / "storage")["output"])
    assert storage_outputs["dvc_remote_url"]["value"] == "s3://${aws_s3_bucket.data.id}/${var.dvc_prefix}"
    assert labelled(parse_dir(MODULES / "storage")["variable"])["dvc_prefix"]["default"] == "dvcstore"
    prefect = parse_dir(MODULES / "prefect")
    assert labelled(prefect["output"])["stage_infrastructure"]["value"] == "${jsonencode(local.stage_infrastructure)}"
    module_locals = {k: v for block in prefect["locals"] for k, v in block.items()}
    assert module_locals["gpu_toleration"] == {
        "key": "nvidia.com/gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule",
    }
    for field in ("node_selector", "tolerations", "resources", "instance_type", "node_class"):
        assert field in module_locals["stage_infrastructure"]


# ---------------------------------------------------------------- the shared workspace (EFS) of the stage pods


def test_workspace_efs_is_kms_encrypted_and_backed_up(storage):
    res = resources(storage)
    efs = res[("aws_efs_file_system", "workspace")]
    assert efs["encrypted"] is True
    assert efs["kms_key_id"] == "${aws_kms_key.workspace[0].arn}"
    assert res[("aws_kms_key", "workspace")]["enable_key_rotation"] is True
    assert "policy" in res[("aws_kms_key", "workspace")]
    assert efs["tags"]["Name"] == "${var.name_prefix}-workspace"
    backup = only(res, "aws_efs_backup_policy")
    assert backup["file_system_id"] == "${aws_efs_file_system.workspace[0].id}"
    assert backup["backup_policy"][0]["status"] == "ENABLED"
    policy = only(res, "aws_efs_file_system_policy")["policy"]
    assert "aws:SecureTransport" in policy and "Deny" in policy  # TLS-only, like the bucket
    # Created only where stage pods need it; the envs switch it on in eks mode.
    assert efs["count"] == "${local.workspace_count}"
    for env in ENVS:
        call = labelled(parse_dir(INFRA / "envs" / env)["module"])["storage"]
        assert call["create_workspace"] == '${var.mode == "eks"}'


def test_workspace_access_point_pins_posix_user_and_root(storage):
    point = only(resources(storage), "aws_efs_access_point")
    assert point["file_system_id"] == "${aws_efs_file_system.workspace[0].id}"
    assert set(point["posix_user"][0]) == {"uid", "gid"}
    root = point["root_directory"][0]
    assert root["path"] == "/lmsleep"
    assert set(root["creation_info"][0]) == {"owner_uid", "owner_gid", "permissions"}


def test_workspace_nfs_is_open_to_the_nodes_only(storage):
    res = resources(storage)
    group = res[("aws_security_group", "workspace")]
    assert "egress" not in group
    (ingress,) = group["ingress"]
    assert (ingress["from_port"], ingress["to_port"], ingress["protocol"]) == (2049, 2049, "tcp")
    assert ingress["security_groups"] == "${var.workspace_client_security_group_ids}"
    assert ingress["cidr_blocks"] == "${var.workspace_client_cidr_blocks}"
    variables = labelled(storage["variable"])
    assert variables["workspace_client_cidr_blocks"]["default"] == []
    assert "0.0.0.0/0" in str(variables["workspace_client_cidr_blocks"]["validation"])  # refused
    assert "0.0.0.0/0" not in str(group)
    targets = res[("aws_efs_mount_target", "workspace")]
    assert targets["subnet_id"] == "${each.value}"
    assert "var.subnet_ids" in targets["for_each"]
    assert targets["security_groups"] == ["${aws_security_group.workspace[0].id}"]
    for env in ENVS:
        call = labelled(parse_dir(INFRA / "envs" / env)["module"])["storage"]
        assert call["workspace_client_security_group_ids"] == "${compact([module.compute.node_security_group_id])}"
        assert call["subnet_ids"] == "${var.subnet_ids}"


def test_efs_csi_driver_addon_with_irsa_role(compute):
    addons = labelled(compute["module"])["eks"]["cluster_addons"]
    assert {"coredns", "kube-proxy", "vpc-cni", "aws-efs-csi-driver"} <= set(addons)
    assert addons["aws-efs-csi-driver"]["service_account_role_arn"] == "${one(aws_iam_role.efs_csi[*].arn)}"
    res = resources(compute)
    assert res[("aws_iam_role", "efs_csi")]["count"] == "${local.is_eks ? 1 : 0}"
    attachment = res[("aws_iam_role_policy_attachment", "efs_csi")]
    assert attachment["policy_arn"].endswith("/service-role/AmazonEFSCSIDriverPolicy")
    trust = resources(compute, "data")[("aws_iam_policy_document", "efs_csi_assume")]["statement"][0]
    assert trust["actions"] == ["sts:AssumeRoleWithWebIdentity"]
    assert ["system:serviceaccount:kube-system:efs-csi-*"] in [c["values"] for c in trust["condition"]]


@pytest.mark.parametrize("env", ENVS)
def test_env_outputs_the_workspace(env):
    outputs = labelled(parse_dir(INFRA / "envs" / env)["output"])
    assert outputs["efs_file_system_id"]["value"] == "${module.storage.efs_file_system_id}"
    assert outputs["efs_access_point_id"]["value"] == "${module.storage.efs_access_point_id}"
    assert outputs["kubernetes_workspace_manifest"]["value"] == "${module.prefect.kubernetes_workspace_manifest}"
    prefect_call = labelled(parse_dir(INFRA / "envs" / env)["module"])["prefect"]
    assert prefect_call["efs_file_system_id"] == "${module.storage.efs_file_system_id}"
    assert prefect_call["efs_access_point_id"] == "${module.storage.efs_access_point_id}"


def test_pool_job_variables_mount_the_workspace_like_params():
    """terraform's prefect_job_variables (the pool defaults) mount the same PVC at the same path as params' defaults."""
    from lmsleep.config import WORKSPACE_MOUNT_PATH, WORKSPACE_PVC, InfrastructureConfig

    prefect = parse_dir(MODULES / "prefect")
    module_locals = {k: v for block in prefect["locals"] for k, v in block.items()}
    assert module_locals["workspace_volumes"] == [
        {"name": "workspace", "persistentVolumeClaim": {"claimName": "${var.workspace_pvc_name}"}}]
    assert module_locals["workspace_volume_mounts"] == [
        {"name": "workspace", "mountPath": "${var.workspace_mount_path}"}]
    assert module_locals["prefect_job_variables"]["volumes"] == "${local.workspace_volumes}"
    assert module_locals["prefect_job_variables"]["volume_mounts"] == "${local.workspace_volume_mounts}"
    variables = labelled(prefect["variable"])
    assert variables["workspace_pvc_name"]["default"] == WORKSPACE_PVC == "lmsleep-workspace"
    assert variables["workspace_mount_path"]["default"] == WORKSPACE_MOUNT_PATH == "/workspace"
    assert InfrastructureConfig().kubernetes_root == WORKSPACE_MOUNT_PATH


def test_workspace_manifest_renders_a_readwritemany_efs_pvc():
    """infra/kubernetes/workspace.yaml, filled the way the prefect module's templatefile (or envsubst) fills it."""
    import string

    import yaml

    text = WORKSPACE_MANIFEST.read_text(encoding="utf-8")
    placeholders = set(re.findall(r"\$\{(\w+)\}", text))
    assert text.count("${") == len(re.findall(r"\$\{\w+\}", text)), "only ${NAME} placeholders (templatefile)"
    assert "%{" not in text
    # templatefile gets exactly these variables (a missing one fails at plan time)
    outputs = (MODULES / "prefect" / "outputs.tf").read_text(encoding="utf-8")
    assert 'templatefile("${path.module}/../../kubernetes/workspace.yaml"' in outputs
    for name in placeholders:
        assert re.search(rf"\b{name}\s*=", outputs), f"templatefile does not set {name}"
    values = {"NAMESPACE": "lmsleep", "STORAGE_CLASS": "lmsleep-efs", "PVC_NAME": "lmsleep-workspace",
              "EFS_FILE_SYSTEM_ID": "fs-0123", "EFS_ACCESS_POINT_ID": "fsap-0456"}
    assert placeholders == set(values)
    docs = {doc["kind"]: doc for doc in yaml.safe_load_all(string.Template(text).substitute(values))}
    assert set(docs) == {"StorageClass", "PersistentVolume", "PersistentVolumeClaim"}
    assert docs["StorageClass"]["provisioner"] == "efs.csi.aws.com"
    pv, pvc = docs["PersistentVolume"]["spec"], docs["PersistentVolumeClaim"]
    assert pv["accessModes"] == pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pv["csi"]["driver"] == "efs.csi.aws.com"
    assert pv["csi"]["volumeHandle"] == "fs-0123::fsap-0456"
    assert pv["persistentVolumeReclaimPolicy"] == "Retain"
    assert pvc["metadata"] == {"name": "lmsleep-workspace", "namespace": "lmsleep",
                               "labels": {"app.kubernetes.io/part-of": "lmsleep"}}
    assert pvc["spec"]["volumeName"] == docs["PersistentVolume"]["metadata"]["name"]
    assert pvc["spec"]["storageClassName"] == pv["storageClassName"] == docs["StorageClass"]["metadata"]["name"]
