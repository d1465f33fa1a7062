output "bucket_name" {
  description = "Name of the DVC remote / Prefect results bucket."
  value       = aws_s3_bucket.data.id
}

output "bucket_arn" {
  description = "ARN of the bucket."
  value       = aws_s3_bucket.data.arn
}

output "kms_key_arn" {
  description = "ARN of the KMS key encrypting the bucket."
  value       = aws_kms_key.bucket.arn
}

output "dvc_prefix" {
  description = "Key prefix of the DVC remote."
  value       = var.dvc_prefix
}

output "prefect_results_prefix" {
  description = "Key prefix of Prefect results."
  value       = var.prefect_results_prefix
}

output "dvc_remote_url" {
  description = "URL for `dvc remote add`."
  value       = "s3://${aws_s3_bucket.data.id}/${var.dvc_prefix}"
}

output "prefect_results_url" {
  description = "Value for PREFECT_LOCAL_STORAGE_PATH / result storage block base path."
  value       = "s3://${aws_s3_bucket.data.id}/${var.prefect_results_prefix}"
}

output "efs_file_system_id" {
  description = "Shared workspace EFS file system (null without create_workspace)."
  value       = one(aws_efs_file_system.workspace[*].id)
}

output "efs_access_point_id" {
  description = "EFS access point (root /lmsleep) the workspace PV mounts (null without create_workspace)."
  value       = one(aws_efs_access_point.workspace[*].id)
}
