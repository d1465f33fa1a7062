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
