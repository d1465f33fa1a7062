variable "environment" {
  description = "Environment name; becomes the Environment tag and part of every name."
  type        = string
  default     = "prod"
}

variable "region" {
  description = "AWS region."
  type        = string
  default     = "us-east-1"
}

variable "required_tags" {
  description = "Organisation-required tags (Owner, CostCenter, ...) added to the provider default_tags."
  type        = map(string)

  validation {
    condition     = alltrue([for k in ["Owner", "CostCenter"] : contains(keys(var.required_tags), k)])
    error_message = "required_tags must contain Owner and CostCenter."
  }
}

# --- storage ----------------------------------------------------------------------------

variable "bucket_name" {
  description = "Globally unique bucket name; empty: lmsleep-prod-<account id>-<region>."
  type        = string
  default     = ""
}

variable "access_log_bucket" {
  description = "Existing bucket receiving S3 server access logs of the data bucket; empty disables them."
  type        = string
  default     = ""
}

variable "noncurrent_version_expiration_days" {
  description = "Days noncurrent object versions are kept."
  type        = number
  default     = 90
}

variable "force_destroy" {
  description = "Allow destroying a non-empty bucket."
  type        = bool
  default     = false
}

variable "workspace_client_cidr_blocks" {
  description = "Extra CIDRs (e.g. the VPC CIDR) allowed NFS to the workspace EFS; the EKS node security group always is."
  type        = list(string)
  default     = []
}

# --- compute ------------------------------------------------------------------------------

variable "mode" {
  description = "\"eks\" (CPU + GPU node groups) or \"single\" (one Deep Learning AMI box)."
  type        = string
  default     = "eks"
}

variable "vpc_id" {
  description = "Existing VPC."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets in at least two AZs."
  type        = list(string)
}

variable "stage_node_class" {
  description = "Pipeline stage -> node class (cpu or gpu)."
  type        = map(string)
  default = {
    prepare_model = "cpu"
    collect       = "cpu"
    validate      = "cpu"
    seed          = "gpu"
    dream         = "gpu"
    evaluate      = "cpu"
    promote       = "cpu"
  }
}

variable "stage_instance_types" {
  description = "Pipeline stage -> EC2 instance type (node group instance types are derived from it)."
  type        = map(string)
  default = {
    prepare_model = "m6i.large"
    collect       = "m6i.large"
    validate      = "m6i.large"
    seed          = "g6e.xlarge"
    dream         = "g6e.xlarge"
    evaluate      = "m6i.xlarge"
    promote       = "m6i.large"
  }
}

variable "cluster_version" {
  description = "EKS Kubernetes version."
  type        = string
  default     = "1.31"
}

variable "cluster_endpoint_public_access" {
  description = "Expose the EKS API publicly (to cluster_endpoint_public_access_cidrs only)."
  type        = bool
  default     = false
}

variable "cluster_endpoint_public_access_cidrs" {
  description = "CIDRs allowed to reach a public EKS API."
  type        = list(string)
  default     = []
}

variable "gpu_ami_type" {
  description = "AL2023_x86_64_NVIDIA or BOTTLEROCKET_x86_64_NVIDIA."
  type        = string
  default     = "AL2023_x86_64_NVIDIA"
}

variable "cpu_capacity_type" {
  description = "ON_DEMAND or SPOT for the CPU node group."
  type        = string
  default     = "ON_DEMAND"
}

variable "gpu_capacity_type" {
  description = "ON_DEMAND or SPOT for the GPU node group."
  type        = string
  default     = "ON_DEMAND"
}

variable "cpu_node_scaling" {
  description = "CPU node group min/max/desired."
  type        = object({ min = number, max = number, desired = number })
  default     = { min = 1, max = 3, desired = 1 }
}

variable "gpu_node_scaling" {
  description = "GPU node group min/max/desired; min 0 scales to zero between nights."
  type        = object({ min = number, max = number, desired = number })
  default     = { min = 0, max = 2, desired = 0 }
}

variable "single_instance_type" {
  description = "Instance type in single mode."
  type        = string
  default     = "g5.xlarge"
}

# --- prefect ---------------------------------------------------------------------------------

variable "k8s_namespace" {
  description = "Namespace of the Prefect worker."
  type        = string
  default     = "lmsleep"
}

variable "k8s_service_account" {
  description = "Service account of the Prefect worker."
  type        = string
  default     = "prefect-worker"
}

variable "work_pool_name" {
  description = "Prefect work pool."
  type        = string
  default     = "lmsleep-prod"
}
