# What the pipeline reads: bucket, DVC remote, Prefect results, where each stage runs.
# Kubernetes objects (namespace, service account, Prefect worker) are installed with the
# prefect-worker Helm chart using these outputs (see infra/README.md); this module only
# creates the IRSA role that the service account assumes.

locals {
  is_eks = var.mode == "eks"

  gpu_toleration = {
    key      = "nvidia.com/gpu"
    operator = "Equal"
    value    = "true"
    effect   = "NoSchedule"
  }

  # stage -> placement. In EKS mode the Prefect Kubernetes work pool merges
  # node_selector / tolerations / resources into the flow-run pod of that stage;
  # in single mode everything runs on the one box and only node_class matters.
  stage_infrastructure = {
    for stage, class in var.stage_node_class : stage => {
      node_class    = class
      instance_type = var.stage_instance_types[stage]
      node_selector = local.is_eks ? { (var.stage_class_label) = class } : {}
      tolerations   = local.is_eks && class == "gpu" ? [local.gpu_toleration] : []
      resources = class == "gpu" ? {
        limits = { "nvidia.com/gpu" = "1" }
      } : {}
    }
  }

  # The shared workspace: every stage pod mounts PVC workspace_pvc_name (EFS, ReadWriteMany) at
  # workspace_mount_path, the root each stage flow runs with (params: infrastructure.kubernetes_root).
  workspace_volumes       = [{ name = "workspace", persistentVolumeClaim = { claimName = var.workspace_pvc_name } }]
  workspace_volume_mounts = [{ name = "workspace", mountPath = var.workspace_mount_path }]

  # Base job variables of the Kubernetes work pool (per-stage ones come from stage_infrastructure).
  # volumes / volume_mounts are pool defaults, so every stage gets the workspace even if its deployment sets none.
  # (The Kubernetes pool exists only in eks mode, where the storage module creates the EFS behind the PVC.)
  prefect_job_variables = {
    namespace            = var.namespace
    service_account_name = var.service_account
    env = {
      AWS_REGION                         = var.region
      LMSLEEP_ENV                        = var.environment
      LMSLEEP_DVC_REMOTE                 = var.dvc_remote_url
      PREFECT_RESULTS_PERSIST_BY_DEFAULT = "true"
      PREFECT_LOCAL_STORAGE_PATH         = var.prefect_results_url
    }
    volumes       = local.workspace_volumes
    volume_mounts = local.workspace_volume_mounts
  }

  # What infra/kubernetes/workspace.yaml needs (StorageClass + PV + PVC, applied once with kubectl).
  kubernetes_workspace = {
    namespace           = var.namespace
    storage_class       = var.workspace_storage_class
    pvc_name            = var.workspace_pvc_name
    mount_path          = var.workspace_mount_path
    efs_file_system_id  = var.efs_file_system_id
    efs_access_point_id = var.efs_access_point_id
    volume_handle       = local.is_eks ? "${var.efs_file_system_id}::${var.efs_access_point_id}" : null
  }
}

data "aws_iam_policy_document" "worker_assume" {
  count = local.is_eks ? 1 : 0

  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${var.oidc_provider}:sub"
      values   = ["system:serviceaccount:${var.namespace}:${var.service_account}"]
    }

    condition {
      test     = "StringEquals"
      variable = "${var.oidc_provider}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "worker" {
  count = local.is_eks ? 1 : 0

  name               = "${var.name_prefix}-prefect-worker"
  description        = "IRSA role of the lmsleep Prefect worker / flow-run pods"
  assume_role_policy = data.aws_iam_policy_document.worker_assume[0].json
}

resource "aws_iam_role_policy_attachment" "worker_bucket" {
  count = local.is_eks ? 1 : 0

  role       = aws_iam_role.worker[0].name
  policy_arn = var.bucket_access_policy_arn
}
