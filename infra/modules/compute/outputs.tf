output "mode" {
  description = "\"eks\" or \"single\"."
  value       = var.mode
}

output "node_role_arn" {
  description = "IAM role of the nodes."
  value       = aws_iam_role.node.arn
}

output "node_instance_profile" {
  description = "Instance profile of the nodes."
  value       = aws_iam_instance_profile.node.name
}

output "bucket_access_policy_arn" {
  description = "Least-privilege policy on the pipeline's bucket prefixes."
  value       = aws_iam_policy.bucket_access.arn
}

output "stage_class_label" {
  description = "Node label key that selects the node class."
  value       = local.stage_class_label
}

output "cpu_instance_types" {
  description = "Instance types offered by the CPU node group."
  value       = local.cpu_instance_types
}

output "gpu_instance_types" {
  description = "Instance types offered by the GPU node group."
  value       = local.gpu_instance_types
}

output "cluster_name" {
  description = "EKS cluster name (null in single mode)."
  value       = local.is_eks ? module.eks[0].cluster_name : null
}

output "cluster_endpoint" {
  description = "EKS API endpoint (null in single mode)."
  value       = local.is_eks ? module.eks[0].cluster_endpoint : null
}

output "oidc_provider_arn" {
  description = "IRSA OIDC provider ARN (null in single mode)."
  value       = local.is_eks ? module.eks[0].oidc_provider_arn : null
}

output "oidc_provider" {
  description = "IRSA OIDC issuer host/path without https:// (null in single mode)."
  value       = local.is_eks ? module.eks[0].oidc_provider : null
}

output "single_instance_id" {
  description = "Instance id of the one box (null in eks mode)."
  value       = local.is_single ? aws_instance.single[0].id : null
}

output "node_security_group_id" {
  description = "Security group of the EKS nodes, allowed to reach the workspace EFS over NFS (null in single mode)."
  value       = local.is_eks ? module.eks[0].node_security_group_id : null
}

output "efs_csi_role_arn" {
  description = "IRSA role of the aws-efs-csi-driver add-on (null in single mode)."
  value       = one(aws_iam_role.efs_csi[*].arn)
}
