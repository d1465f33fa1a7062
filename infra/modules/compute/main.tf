# GPU capacity per pipeline stage.
#   mode = "eks":    EKS cluster (terraform-aws-modules/eks/aws) with a CPU and a GPU managed node group.
#   mode = "single": one EC2 instance from the AWS Deep Learning AMI runs every stage.

data "aws_partition" "current" {}

locals {
  is_eks    = var.mode == "eks"
  is_single = var.mode == "single"

  cpu_stages = sort([for stage, class in var.stage_node_class : stage if class == "cpu"])
  gpu_stages = sort([for stage, class in var.stage_node_class : stage if class == "gpu"])

  # Instance types per node group come from the per-stage map.
  cpu_instance_types = distinct([for stage in local.cpu_stages : var.stage_instance_types[stage]])
  gpu_instance_types = distinct([for stage in local.gpu_stages : var.stage_instance_types[stage]])

  # Node label key selecting the node class; the node groups below spell it out literally.
  stage_class_label = "lmsleep/stage-class"

  policy_arn_prefix = "arn:${data.aws_partition.current.partition}:iam::aws:policy"
}

# --- least-privilege access to the bucket prefixes ------------------------------------

data "aws_iam_policy_document" "bucket_access" {
  statement {
    sid       = "ListPipelinePrefixes"
    actions   = ["s3:ListBucket"]
    resources = [var.bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = flatten([for p in var.bucket_prefixes : [p, "${p}/*"]])
    }
  }

  statement {
    sid       = "LocateBucket"
    actions   = ["s3:GetBucketLocation"]
    resources = [var.bucket_arn]
  }

  statement {
    sid = "ReadWritePipelineObjects"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = [for p in var.bucket_prefixes : "${var.bucket_arn}/${p}/*"]
  }

  statement {
    sid       = "UseBucketKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
  }
}

resource "aws_iam_policy" "bucket_access" {
  name        = "${var.name_prefix}-bucket-access"
  description = "lmsleep: read/write the DVC remote and Prefect results prefixes only"
  policy      = data.aws_iam_policy_document.bucket_access.json
}

# --- node role + instance profile -----------------------------------------------------------

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "node" {
  name               = "${var.name_prefix}-node"
  description        = "lmsleep nodes (EKS managed node groups or the single box)"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

resource "aws_iam_instance_profile" "node" {
  name = "${var.name_prefix}-node"
  role = aws_iam_role.node.name
}

# Session Manager instead of SSH: no inbound port anywhere.
resource "aws_iam_role_policy_attachment" "node_ssm" {
  role       = aws_iam_role.node.name
  policy_arn = "${local.policy_arn_prefix}/AmazonSSMManagedInstanceCore"
}

# EKS: pods reach the bucket through IRSA (prefect module), not the node role.
# Single box: the instance itself runs the stages, so the node role gets the bucket policy.
resource "aws_iam_role_policy_attachment" "node_bucket" {
  count = local.is_single ? 1 : 0

  role       = aws_iam_role.node.name
  policy_arn = aws_iam_policy.bucket_access.arn
}

resource "aws_iam_role_policy_attachment" "node_eks" {
  for_each = local.is_eks ? toset([
    "AmazonEKSWorkerNodePolicy",
    "AmazonEKS_CNI_Policy",
    "AmazonEC2ContainerRegistryReadOnly",
  ]) : toset([])

  role       = aws_iam_role.node.name
  policy_arn = "${local.policy_arn_prefix}/${each.value}"
}

# --- mode = "eks" -----------------------------------------------------------------------------

module "eks" {
  source  = "terraform-aws-modules/eks/aws"
  version = "20.37.1" # exact: v21 needs AWS provider 6.x; bump deliberately
  count   = local.is_eks ? 1 : 0

  cluster_name    = "${var.name_prefix}-eks"
  cluster_version = var.cluster_version

  vpc_id     = var.vpc_id
  subnet_ids = var.subnet_ids

  cluster_endpoint_private_access      = true
  cluster_endpoint_public_access       = var.cluster_endpoint_public_access
  cluster_endpoint_public_access_cidrs = var.cluster_endpoint_public_access_cidrs

  enable_irsa                              = true
  enable_cluster_creator_admin_permissions = true

  cluster_addons = {
    coredns    = {}
    kube-proxy = {}
    vpc-cni    = {}
    # Mounts the shared workspace (storage module EFS) as PVC lmsleep-workspace: infra/kubernetes/workspace.yaml.
    aws-efs-csi-driver = {
      service_account_role_arn = one(aws_iam_role.efs_csi[*].arn)
    }
  }

  eks_managed_node_group_defaults = {
    create_iam_role = false
    iam_role_arn    = aws_iam_role.node.arn

    block_device_mappings = {
      root = {
        device_name = "/dev/xvda"
        ebs = {
          volume_size           = var.node_disk_size_gb
          volume_type           = "gp3"
          encrypted             = true
          delete_on_termination = true
        }
      }
    }

    # IMDSv2 only, hop limit 1: pods cannot borrow the node role.
    metadata_options = {
      http_endpoint               = "enabled"
      http_tokens                 = "required"
      http_put_response_hop_limit = 1
    }
  }

  eks_managed_node_groups = {
    # collect / validate / evaluate / promote (whatever stage_node_class marks "cpu").
    cpu = {
      ami_type       = "AL2023_x86_64_STANDARD"
      instance_types = local.cpu_instance_types
      capacity_type  = var.cpu_capacity_type

      min_size     = var.cpu_node_scaling.min
      max_size     = var.cpu_node_scaling.max
      desired_size = var.cpu_node_scaling.desired

      labels = {
        "lmsleep/stage-class" = "cpu"
      }
    }

    # seed / dream (whatever stage_node_class marks "gpu"). Tainted so only pods that
    # tolerate nvidia.com/gpu (the stage_infrastructure output) land here.
    gpu = {
      ami_type       = var.gpu_ami_type
      instance_types = local.gpu_instance_types
      capacity_type  = var.gpu_capacity_type

      min_size     = var.gpu_node_scaling.min
      max_size     = var.gpu_node_scaling.max
      desired_size = var.gpu_node_scaling.desired

      labels = {
        "lmsleep/stage-class" = "gpu"
      }

      taints = {
        gpu = {
          key    = "nvidia.com/gpu"
          value  = "true"
          effect = "NO_SCHEDULE"
        }
      }
    }
  }
}

# IRSA role of the EFS CSI driver's service accounts (kube-system:efs-csi-*), as AWS documents for the add-on.
data "aws_iam_policy_document" "efs_csi_assume" {
  count = local.is_eks ? 1 : 0

  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [module.eks[0].oidc_provider_arn]
    }

    condition {
      test     = "StringLike"
      variable = "${module.eks[0].oidc_provider}:sub"
      values   = ["system:serviceaccount:kube-system:efs-csi-*"]
    }

    condition {
      test     = "StringEquals"
      variable = "${module.eks[0].oidc_provider}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "efs_csi" {
  count = local.is_eks ? 1 : 0

  name               = "${var.name_prefix}-efs-csi"
  description        = "IRSA role of the aws-efs-csi-driver EKS add-on"
  assume_role_policy = data.aws_iam_policy_document.efs_csi_assume[0].json
}

resource "aws_iam_role_policy_attachment" "efs_csi" {
  count = local.is_eks ? 1 : 0

  role       = aws_iam_role.efs_csi[0].name
  policy_arn = "${local.policy_arn_prefix}/service-role/AmazonEFSCSIDriverPolicy"
}

# --- mode = "single" --------------------------------------------------------------------------

data "aws_ami" "dlami" {
  count = local.is_single ? 1 : 0

  most_recent = true
  owners      = ["amazon"]

  filter {
    name   = "name"
    values = [var.dlami_name_filter]
  }

  filter {
    name   = "architecture"
    values = ["x86_64"]
  }

  filter {
    name   = "state"
    values = ["available"]
  }
}

resource "aws_security_group" "single" {
  count = local.is_single ? 1 : 0

  name        = "${var.name_prefix}-single"
  description = "lmsleep single box: no inbound (use SSM), HTTPS out only"
  vpc_id      = var.vpc_id

  egress {
    description = "HTTPS to S3, package indexes, model hub, W&B and the Prefect API"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_instance" "single" {
  count = local.is_single ? 1 : 0

  ami                    = data.aws_ami.dlami[0].id
  instance_type          = var.single_instance_type
  subnet_id              = var.subnet_ids[0]
  vpc_security_group_ids = [aws_security_group.single[0].id]
  iam_instance_profile   = aws_iam_instance_profile.node.name

  associate_public_ip_address = false
  ebs_optimized               = true
  monitoring                  = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    volume_size           = var.single_root_volume_gb
    volume_type           = "gp3"
    encrypted             = true
    delete_on_termination = true
  }

  tags = {
    Name = "${var.name_prefix}-single"
  }

  # A new DLAMI release must not replace the box under a running night.
  lifecycle {
    ignore_changes = [ami]
  }
}
