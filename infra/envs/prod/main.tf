provider "aws" {
  region = var.region

  # Every taggable resource gets these; modules add only resource-specific tags.
  default_tags {
    tags = merge(var.required_tags, {
      Project     = "lmsleep"
      Environment = var.environment
      ManagedBy   = "terraform"
    })
  }
}

locals {
  name_prefix = "lmsleep-${var.environment}"
}

module "storage" {
  source = "../../modules/storage"

  name_prefix                        = local.name_prefix
  bucket_name                        = var.bucket_name
  access_log_bucket                  = var.access_log_bucket
  noncurrent_version_expiration_days = var.noncurrent_version_expiration_days
  force_destroy                      = var.force_destroy

  # Shared workspace (EFS) of the stage pods: eks mode only, NFS from the node security group (+ optional CIDRs).
  create_workspace                    = var.mode == "eks"
  vpc_id                              = var.vpc_id
  subnet_ids                          = var.subnet_ids
  workspace_client_security_group_ids = compact([module.compute.node_security_group_id])
  workspace_client_cidr_blocks        = var.workspace_client_cidr_blocks
}

module "compute" {
  source = "../../modules/compute"

  name_prefix = local.name_prefix
  mode        = var.mode
  vpc_id      = var.vpc_id
  subnet_ids  = var.subnet_ids

  stage_node_class     = var.stage_node_class
  stage_instance_types = var.stage_instance_types

  cluster_version                      = var.cluster_version
  cluster_endpoint_public_access       = var.cluster_endpoint_public_access
  cluster_endpoint_public_access_cidrs = var.cluster_endpoint_public_access_cidrs
  gpu_ami_type                         = var.gpu_ami_type
  cpu_capacity_type                    = var.cpu_capacity_type
  gpu_capacity_type                    = var.gpu_capacity_type
  cpu_node_scaling                     = var.cpu_node_scaling
  gpu_node_scaling                     = var.gpu_node_scaling
  single_instance_type                 = var.single_instance_type

  bucket_arn      = module.storage.bucket_arn
  kms_key_arn     = module.storage.kms_key_arn
  bucket_prefixes = [module.storage.dvc_prefix, module.storage.prefect_results_prefix]
}

module "prefect" {
  source = "../../modules/prefect"

  name_prefix = local.name_prefix
  environment = var.environment
  region      = var.region
  mode        = module.compute.mode

  bucket_name         = module.storage.bucket_name
  dvc_remote_url      = module.storage.dvc_remote_url
  prefect_results_url = module.storage.prefect_results_url

  bucket_access_policy_arn = module.compute.bucket_access_policy_arn
  oidc_provider_arn        = module.compute.oidc_provider_arn
  oidc_provider            = module.compute.oidc_provider

  namespace       = var.k8s_namespace
  service_account = var.k8s_service_account
  work_pool_name  = var.work_pool_name

  stage_node_class     = var.stage_node_class
  stage_instance_types = var.stage_instance_types
  stage_class_label    = module.compute.stage_class_label

  efs_file_system_id  = module.storage.efs_file_system_id
  efs_access_point_id = module.storage.efs_access_point_id
}
