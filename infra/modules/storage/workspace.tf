# The shared workspace of the Kubernetes stage pods (infrastructure.mode: pools).
#
# Stages share state through files under one workspace root (data/nights/<night>/, models/nights/<night>/,
# models/base/, models/registry/, reports/<night>/). On the Kubernetes work pool every stage is its own pod, so
# the root must be a ReadWriteMany volume that every pod mounts: this EFS file system, mounted through the access
# point below by the EFS CSI driver (compute module) as PVC lmsleep-workspace (infra/kubernetes/workspace.yaml).
# Created only when var.create_workspace (the envs set it in eks mode; the single box has its own disk).

locals {
  workspace_count = var.create_workspace ? 1 : 0
}

resource "aws_kms_key" "workspace" {
  count = local.workspace_count

  description             = "${var.name_prefix}: encryption at rest of the shared workspace EFS file system"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_deletion_window_days

  # As for the bucket key: the account administers the key; EFS uses it through grants it creates on behalf of
  # the caller that creates the file system.
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "AccountAdministersKey"
        Effect    = "Allow"
        Principal = { AWS = local.account_arn }
        Action    = "kms:*"
        Resource  = "*"
      },
    ]
  })
}

resource "aws_kms_alias" "workspace" {
  count = local.workspace_count

  name          = "alias/${var.name_prefix}-workspace"
  target_key_id = aws_kms_key.workspace[0].key_id
}

resource "aws_efs_file_system" "workspace" {
  count = local.workspace_count

  creation_token   = "${var.name_prefix}-workspace"
  encrypted        = true
  kms_key_id       = aws_kms_key.workspace[0].arn
  performance_mode = "generalPurpose"
  throughput_mode  = "elastic" # pay per use: a burst when seed writes an adapter, nothing between nights

  # Optional: files untouched for N days (old nights) move to Infrequent Access, and back on first access.
  dynamic "lifecycle_policy" {
    for_each = var.workspace_transition_to_ia != "" ? [var.workspace_transition_to_ia] : []
    content {
      transition_to_ia = lifecycle_policy.value
    }
  }

  dynamic "lifecycle_policy" {
    for_each = var.workspace_transition_to_ia != "" ? ["AFTER_1_ACCESS"] : []
    content {
      transition_to_primary_storage_class = lifecycle_policy.value
    }
  }

  tags = {
    Name = "${var.name_prefix}-workspace"
  }
}

# Automatic daily backups in AWS Backup's default plan (aws/efs/automatic-backup-plan, 35-day retention).
resource "aws_efs_backup_policy" "workspace" {
  count = local.workspace_count

  file_system_id = aws_efs_file_system.workspace[0].id

  backup_policy {
    status = "ENABLED"
  }
}

# Clients may mount only through a mount target and only over TLS (the EFS CSI driver uses TLS by default).
resource "aws_efs_file_system_policy" "workspace" {
  count = local.workspace_count

  file_system_id = aws_efs_file_system.workspace[0].id

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "MountThroughMountTargets"
        Effect    = "Allow"
        Principal = { AWS = "*" }
        Action    = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
        Resource  = aws_efs_file_system.workspace[0].arn
        Condition = { Bool = { "elasticfilesystem:AccessedViaMountTarget" = "true" } }
      },
      {
        Sid       = "DenyInsecureTransport"
        Effect    = "Deny"
        Principal = { AWS = "*" }
        Action    = "*"
        Resource  = aws_efs_file_system.workspace[0].arn
        Condition = { Bool = { "aws:SecureTransport" = "false" } }
      },
    ]
  })
}

# Every pod sees /lmsleep of the file system as its root, as one POSIX user, whatever user its image runs as.
resource "aws_efs_access_point" "workspace" {
  count = local.workspace_count

  file_system_id = aws_efs_file_system.workspace[0].id

  posix_user {
    uid = var.workspace_posix_uid
    gid = var.workspace_posix_gid
  }

  root_directory {
    path = "/lmsleep"

    creation_info {
      owner_uid   = var.workspace_posix_uid
      owner_gid   = var.workspace_posix_gid
      permissions = "0750"
    }
  }

  tags = {
    Name = "${var.name_prefix}-workspace"
  }
}

# NFS (2049/tcp) in from the nodes only; no egress rule (security groups are stateful, mount targets start nothing).
resource "aws_security_group" "workspace" {
  count = local.workspace_count

  name        = "${var.name_prefix}-workspace-efs"
  description = "lmsleep workspace EFS mount targets: NFS from the cluster nodes only"
  vpc_id      = var.vpc_id

  ingress {
    description     = "NFS from the EKS nodes (EFS CSI driver)"
    from_port       = 2049
    to_port         = 2049
    protocol        = "tcp"
    security_groups = var.workspace_client_security_group_ids
    cidr_blocks     = var.workspace_client_cidr_blocks
  }

  tags = {
    Name = "${var.name_prefix}-workspace-efs"
  }

  lifecycle {
    precondition {
      condition     = length(var.workspace_client_security_group_ids) + length(var.workspace_client_cidr_blocks) > 0
      error_message = "The workspace needs at least one NFS client: workspace_client_security_group_ids or workspace_client_cidr_blocks."
    }
  }
}

# One mount target per node subnet (subnet_ids must be in distinct AZs: EFS allows one mount target per AZ).
resource "aws_efs_mount_target" "workspace" {
  for_each = var.create_workspace ? toset(var.subnet_ids) : toset([])

  file_system_id  = aws_efs_file_system.workspace[0].id
  subnet_id       = each.value
  security_groups = [aws_security_group.workspace[0].id]
}
