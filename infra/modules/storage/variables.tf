variable "name_prefix" {
  description = "Prefix for resource names, e.g. lmsleep-dev."
  type        = string
}

variable "bucket_name" {
  description = "Globally unique S3 bucket name. Empty: <name_prefix>-<account id>-<region>."
  type        = string
  default     = ""
}

variable "dvc_prefix" {
  description = "Key prefix of the DVC remote inside the bucket."
  type        = string
  default     = "dvcstore"
}

variable "prefect_results_prefix" {
  description = "Key prefix of Prefect task/flow results inside the bucket."
  type        = string
  default     = "prefect-results"
}

variable "noncurrent_version_expiration_days" {
  description = "Days after which noncurrent object versions are deleted."
  type        = number
  default     = 30
}

variable "noncurrent_versions_to_keep" {
  description = "Newest noncurrent versions kept regardless of age."
  type        = number
  default     = 3
}

variable "access_log_bucket" {
  description = "Existing bucket (with its own retention) receiving S3 server access logs. Empty disables access logging (not recommended for prod)."
  type        = string
  default     = ""
}

variable "force_destroy" {
  description = "Allow terraform destroy to delete a non-empty bucket (dev only)."
  type        = bool
  default     = false
}

variable "kms_deletion_window_days" {
  description = "Waiting period before the KMS key is deleted."
  type        = number
  default     = 30
}

# --- shared workspace (EFS, workspace.tf) ----------------------------------------------------

variable "create_workspace" {
  description = "Create the shared workspace EFS file system (needed when stages run as separate Kubernetes pods)."
  type        = bool
  default     = false
}

variable "vpc_id" {
  description = "VPC of the workspace mount targets and their security group (required with create_workspace)."
  type        = string
  default     = null
}

variable "subnet_ids" {
  description = "Node subnets, one per AZ: each gets a workspace mount target."
  type        = list(string)
  default     = []
}

variable "workspace_client_security_group_ids" {
  description = "Security groups allowed to reach the workspace over NFS (2049/tcp): the EKS node security group."
  type        = list(string)
  default     = []
}

variable "workspace_client_cidr_blocks" {
  description = "CIDRs allowed to reach the workspace over NFS (2049/tcp), e.g. the VPC CIDR; empty: security groups only."
  type        = list(string)
  default     = []

  validation {
    condition     = !contains(var.workspace_client_cidr_blocks, "0.0.0.0/0")
    error_message = "workspace_client_cidr_blocks must not open NFS to 0.0.0.0/0."
  }
}

variable "workspace_posix_uid" {
  description = "POSIX uid every pod acts as on the workspace (EFS access point)."
  type        = number
  default     = 1000
}

variable "workspace_posix_gid" {
  description = "POSIX gid every pod acts as on the workspace (EFS access point)."
  type        = number
  default     = 1000
}

variable "workspace_transition_to_ia" {
  description = "EFS lifecycle: move files to Infrequent Access after this (AFTER_7_DAYS, AFTER_30_DAYS, ...); empty: never."
  type        = string
  default     = "AFTER_30_DAYS"
}
