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

  # Base job variables of the Kubernetes work pool (per-stage ones come from stage_infrastructure).
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
