output "region" {
  description = "AWS region."
  value       = var.region
}

output "bucket_name" {
  description = "Bucket holding the DVC remote and Prefect results."
  value       = module.storage.bucket_name
}

output "dvc_remote_url" {
  description = "dvc remote add -d s3 <this>"
  value       = module.storage.dvc_remote_url
}

output "prefect_results_url" {
  description = "Prefect result storage base path."
  value       = module.storage.prefect_results_url
}

output "kms_key_arn" {
  description = "KMS key encrypting the bucket."
  value       = module.storage.kms_key_arn
}

output "efs_file_system_id" {
  description = "Shared workspace EFS file system of the stage pods (null in single mode)."
  value       = module.storage.efs_file_system_id
}

output "efs_access_point_id" {
  description = "EFS access point (root /lmsleep) of the workspace PV (null in single mode)."
  value       = module.storage.efs_access_point_id
}

output "mode" {
  description = "Compute mode: eks or single."
  value       = module.compute.mode
}

output "cluster_name" {
  description = "EKS cluster (null in single mode): aws eks update-kubeconfig --name <this>."
  value       = module.compute.cluster_name
}

output "single_instance_id" {
  description = "One-box instance (null in eks mode): aws ssm start-session --target <this>."
  value       = module.compute.single_instance_id
}

output "k8s_namespace" {
  description = "Namespace of the Prefect worker."
  value       = module.prefect.namespace
}

output "k8s_service_account" {
  description = "Service account of the Prefect worker."
  value       = module.prefect.service_account
}

output "worker_role_arn" {
  description = "IRSA role for the service account annotation eks.amazonaws.com/role-arn."
  value       = module.prefect.worker_role_arn
}

output "work_pool_name" {
  description = "Prefect work pool name."
  value       = module.prefect.work_pool_name
}

output "stage_infrastructure" {
  description = "JSON: stage -> node_class, instance_type, node_selector, tolerations, resources."
  value       = module.prefect.stage_infrastructure
}

output "prefect_job_variables" {
  description = "JSON: base job variables of the Prefect Kubernetes work pool."
  value       = module.prefect.prefect_job_variables
}

output "kubernetes_workspace" {
  description = "Workspace on Kubernetes: namespace, storage_class, pvc_name, mount_path, EFS ids, PV volume_handle."
  value       = module.prefect.kubernetes_workspace
}

output "kubernetes_workspace_manifest" {
  description = "StorageClass + PV + PVC of the workspace (infra/kubernetes/workspace.yaml, filled): | kubectl apply -f -"
  value       = module.prefect.kubernetes_workspace_manifest
}

output "efs_csi_role_arn" {
  description = "IRSA role of the aws-efs-csi-driver add-on (null in single mode)."
  value       = module.compute.efs_csi_role_arn
}

output "pipeline_config" {
  description = "Everything the pipeline reads, as one object (terraform output -json pipeline_config)."
  value       = module.prefect.pipeline_config
}
