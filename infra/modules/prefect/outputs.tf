output "namespace" {
  description = "Kubernetes namespace of the Prefect worker."
  value       = var.namespace
}

output "service_account" {
  description = "Kubernetes service account of the Prefect worker (annotate with worker_role_arn)."
  value       = var.service_account
}

output "worker_role_arn" {
  description = "IRSA role ARN for eks.amazonaws.com/role-arn (null in single mode)."
  value       = local.is_eks ? aws_iam_role.worker[0].arn : null
}

output "work_pool_name" {
  description = "Prefect work pool name."
  value       = var.work_pool_name
}

output "stage_infrastructure" {
  description = "JSON: stage -> {node_class, instance_type, node_selector, tolerations, resources}."
  value       = jsonencode(local.stage_infrastructure)
}

output "prefect_job_variables" {
  description = "JSON: base job variables of the Prefect Kubernetes work pool."
  value       = jsonencode(local.prefect_job_variables)
}

output "kubernetes_workspace" {
  description = "The shared workspace on Kubernetes: namespace, storage_class, pvc_name, mount_path, EFS ids, PV volume_handle."
  value       = local.kubernetes_workspace
}

output "kubernetes_workspace_manifest" {
  description = "infra/kubernetes/workspace.yaml with the ids filled in (StorageClass + PV + PVC); pipe to `kubectl apply -f -`. Null in single mode."
  value = local.is_eks ? templatefile("${path.module}/../../kubernetes/workspace.yaml", {
    NAMESPACE           = var.namespace
    STORAGE_CLASS       = var.workspace_storage_class
    PVC_NAME            = var.workspace_pvc_name
    EFS_FILE_SYSTEM_ID  = var.efs_file_system_id
    EFS_ACCESS_POINT_ID = var.efs_access_point_id
  }) : null
}

output "pipeline_config" {
  description = "Everything the pipeline reads, as one object."
  value = {
    environment         = var.environment
    region              = var.region
    mode                = var.mode
    bucket_name         = var.bucket_name
    dvc_remote_url      = var.dvc_remote_url
    prefect_results_url = var.prefect_results_url
    namespace           = var.namespace
    service_account     = var.service_account
    work_pool_name      = var.work_pool_name
    workspace_pvc_name  = var.workspace_pvc_name
    kubernetes_root     = var.workspace_mount_path
  }
}
