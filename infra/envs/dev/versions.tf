terraform {
  required_version = ">= 1.5.7"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.95"
    }
  }

  # Remote state. Create the state bucket (versioned, encrypted) once,
  # by hand or from a bootstrap stack, then uncomment and run
  #   terraform init -backend-config=backend.hcl
  # where backend.hcl holds bucket, region and use_lockfile = true (Terraform >= 1.10;
  # older versions: dynamodb_table). See infra/README.md.
  # Until then state is local (terraform.tfstate in this folder; never commit it).
  #
  # backend "s3" {
  #   key     = "lmsleep/dev/terraform.tfstate"
  #   encrypt = true
  # }
}
