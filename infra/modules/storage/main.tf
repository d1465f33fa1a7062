# Storage for the DVC remote and Prefect results.
#
# Plain aws_* resources on purpose instead of terraform-aws-modules/s3-bucket/aws:
# checkov runs offline here (--download-external-modules false), so it can only
# check resources whose source is in this repository. With the registry module the
# bucket's encryption, versioning and public-access settings would be invisible to
# `make infra-check` and to tests/test_infra.py.

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

locals {
  bucket_name = var.bucket_name != "" ? var.bucket_name : "${var.name_prefix}-${data.aws_caller_identity.current.account_id}-${data.aws_region.current.name}"
  account_arn = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"
}

# --- KMS key for SSE-KMS -----------------------------------------------------

resource "aws_kms_key" "bucket" {
  description             = "${var.name_prefix}: SSE-KMS for the DVC remote / Prefect results bucket"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_deletion_window_days

  # Key administration stays with the account; IAM policies (compute module) grant
  # the node / worker roles kms:Decrypt + GenerateDataKey on this key only.
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

resource "aws_kms_alias" "bucket" {
  name          = "alias/${var.name_prefix}-data"
  target_key_id = aws_kms_key.bucket.key_id
}

# --- Bucket --------------------------------------------------------------------

resource "aws_s3_bucket" "data" {
  bucket        = local.bucket_name
  force_destroy = var.force_destroy
}

resource "aws_s3_bucket_ownership_controls" "data" {
  bucket = aws_s3_bucket.data.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "data" {
  bucket = aws_s3_bucket.data.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "data" {
  bucket = aws_s3_bucket.data.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "data" {
  bucket = aws_s3_bucket.data.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.bucket.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "data" {
  bucket = aws_s3_bucket.data.id

  # Versioning must be on before noncurrent-version rules make sense.
  depends_on = [aws_s3_bucket_versioning.data]

  rule {
    id     = "expire-noncurrent-versions"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days           = var.noncurrent_version_expiration_days
      newer_noncurrent_versions = var.noncurrent_versions_to_keep
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  rule {
    id     = "clean-expired-delete-markers"
    status = "Enabled"

    filter {}

    expiration {
      expired_object_delete_marker = true
    }
  }
}

resource "aws_s3_bucket_logging" "data" {
  count = var.access_log_bucket != "" ? 1 : 0

  bucket        = aws_s3_bucket.data.id
  target_bucket = var.access_log_bucket
  target_prefix = "s3-access/${local.bucket_name}/"
}

# TLS only: deny every request that does not arrive over HTTPS.
data "aws_iam_policy_document" "tls_only" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.data.arn,
      "${aws_s3_bucket.data.arn}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "data" {
  bucket = aws_s3_bucket.data.id
  policy = data.aws_iam_policy_document.tls_only.json

  # The public access block must exist first or PutBucketPolicy can race it.
  depends_on = [aws_s3_bucket_public_access_block.data]
}
