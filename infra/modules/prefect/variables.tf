variable "name_prefix" {
  description = "Prefix for resource names, e.g. lmsleep-dev."
  type        = string
}

variable "environment" {
  description = "Environment name (dev, prod)."
  type        = string
}

variable "region" {
  description = "AWS region the pipeline runs in."
  type        = string
}

variable "mode" {
  description = "Compute mode from the compute module: \"eks\" or \"single\"."
  type        = string
}

variable "bucket_name" {
  description = "Data bucket name (storage module)."
  type        = string
}

variable "dvc_remote_url" {
  description = "s3:// URL of the DVC remote (storage module)."
  type        = string
}

variable "prefect_results_url" {
  description = "s3:// URL of the Prefect results prefix (storage module)."
  type        = string
}

variable "bucket_access_policy_arn" {
  description = "Least-privilege bucket policy (compute module), attached to the worker IRSA role."
  type        = string
}

variable "oidc_provider_arn" {
  description = "EKS IRSA OIDC provider ARN (null in single mode)."
  type        = string
  default     = null
}

variable "oidc_provider" {
  description = "EKS OIDC issuer without https:// (null in single mode)."
  type        = string
  default     = null
}

variable "namespace" {
  description = "Kubernetes namespace of the Prefect worker and its flow-run pods."
  type        = string
  default     = "lmsleep"
}

variable "service_account" {
  description = "Kubernetes service account of the Prefect worker and flow-run pods (annotated with the IRSA role)."
  type        = string
  default     = "prefect-worker"
}

variable "work_pool_name" {
  description = "Prefect work pool the nightly deployment targets."
  type        = string
  default     = "lmsleep-k8s"
}

variable "stage_node_class" {
  description = "Pipeline stage -> node class (\"cpu\" or \"gpu\")."
  type        = map(string)
}

variable "stage_instance_types" {
  description = "Pipeline stage -> EC2 instance type."
  type        = map(string)
}

variable "stage_class_label" {
  description = "Node label key selecting the node class (compute module)."
  type        = string
}

# --- shared workspace (Kubernetes side of the storage module's EFS) ---------------------------

variable "efs_file_system_id" {
  description = "Workspace EFS file system (storage module; null there in single mode, \"\" here)."
  type        = string
  default     = ""
  nullable    = false
}

variable "efs_access_point_id" {
  description = "Workspace EFS access point (storage module; null there in single mode, \"\" here)."
  type        = string
  default     = ""
  nullable    = false
}

variable "workspace_storage_class" {
  description = "StorageClass of the workspace PV/PVC (infra/kubernetes/workspace.yaml)."
  type        = string
  default     = "lmsleep-efs"
}

variable "workspace_pvc_name" {
  description = "ReadWriteMany PVC every stage pod mounts (params: infrastructure.stage_job_variables volumes)."
  type        = string
  default     = "lmsleep-workspace"
}

variable "workspace_mount_path" {
  description = "Where stage pods mount the workspace; must equal params infrastructure.kubernetes_root."
  type        = string
  default     = "/workspace"
}
