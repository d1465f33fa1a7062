variable "name_prefix" {
  description = "Prefix for resource names, e.g. lmsleep-dev."
  type        = string
}

variable "mode" {
  description = "\"eks\": EKS cluster with a CPU and a GPU managed node group. \"single\": one Deep Learning AMI EC2 instance runs every stage."
  type        = string
  default     = "eks"

  validation {
    condition     = contains(["eks", "single"], var.mode)
    error_message = "mode must be \"eks\" or \"single\"."
  }
}

variable "vpc_id" {
  description = "Existing VPC to run in."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets (with NAT or VPC endpoints for S3/ECR/STS) for nodes; at least two AZs for EKS."
  type        = list(string)
}

# --- per-stage placement ----------------------------------------------------------

variable "stage_node_class" {
  description = "Pipeline stage -> node class (\"cpu\" or \"gpu\")."
  type        = map(string)

  validation {
    condition     = alltrue([for c in values(var.stage_node_class) : contains(["cpu", "gpu"], c)])
    error_message = "Every stage_node_class value must be \"cpu\" or \"gpu\"."
  }
}

variable "stage_instance_types" {
  description = "Pipeline stage -> EC2 instance type. The CPU node group offers the types of all cpu stages, the GPU node group those of all gpu stages."
  type        = map(string)
}

# --- EKS ------------------------------------------------------------------------------

variable "cluster_version" {
  description = "Kubernetes version of the EKS cluster."
  type        = string
  default     = "1.31"
}

variable "cluster_endpoint_public_access" {
  description = "Expose the EKS API endpoint publicly (restricted to cluster_endpoint_public_access_cidrs)."
  type        = bool
  default     = false
}

variable "cluster_endpoint_public_access_cidrs" {
  description = "CIDRs allowed to reach a public EKS API endpoint."
  type        = list(string)
  default     = []
}

variable "gpu_ami_type" {
  description = "EKS AMI type of the GPU node group."
  type        = string
  default     = "AL2023_x86_64_NVIDIA"

  validation {
    condition     = contains(["AL2023_x86_64_NVIDIA", "BOTTLEROCKET_x86_64_NVIDIA"], var.gpu_ami_type)
    error_message = "gpu_ami_type must be AL2023_x86_64_NVIDIA or BOTTLEROCKET_x86_64_NVIDIA."
  }
}

variable "cpu_capacity_type" {
  description = "ON_DEMAND or SPOT for the CPU node group."
  type        = string
  default     = "ON_DEMAND"

  validation {
    condition     = contains(["ON_DEMAND", "SPOT"], var.cpu_capacity_type)
    error_message = "cpu_capacity_type must be ON_DEMAND or SPOT."
  }
}

variable "gpu_capacity_type" {
  description = "ON_DEMAND or SPOT for the GPU node group (SPOT: seed/dream must resume from checkpoints)."
  type        = string
  default     = "ON_DEMAND"

  validation {
    condition     = contains(["ON_DEMAND", "SPOT"], var.gpu_capacity_type)
    error_message = "gpu_capacity_type must be ON_DEMAND or SPOT."
  }
}

variable "cpu_node_scaling" {
  description = "min/max/desired size of the CPU node group."
  type        = object({ min = number, max = number, desired = number })
  default     = { min = 1, max = 3, desired = 1 }
}

variable "gpu_node_scaling" {
  description = "min/max/desired size of the GPU node group. min 0 lets it scale to zero between nights."
  type        = object({ min = number, max = number, desired = number })
  default     = { min = 0, max = 2, desired = 0 }
}

variable "node_disk_size_gb" {
  description = "Root volume size of EKS nodes (model weights and datasets are cached there)."
  type        = number
  default     = 200
}

# --- single box ---------------------------------------------------------------------------

variable "single_instance_type" {
  description = "Instance type of the one-box mode (must have an NVIDIA GPU if any stage is gpu)."
  type        = string
  default     = "g5.xlarge"
}

variable "single_root_volume_gb" {
  description = "Root volume size of the one-box instance."
  type        = number
  default     = 250
}

variable "dlami_name_filter" {
  description = "Name filter of the AWS Deep Learning AMI used in single mode."
  type        = string
  default     = "Deep Learning OSS Nvidia Driver AMI GPU PyTorch * (Ubuntu 22.04) *"
}

# --- data access ----------------------------------------------------------------------

variable "bucket_arn" {
  description = "ARN of the data bucket (storage module)."
  type        = string
}

variable "kms_key_arn" {
  description = "ARN of the KMS key encrypting the bucket."
  type        = string
}

variable "bucket_prefixes" {
  description = "Key prefixes in the bucket the pipeline may read and write (DVC remote, Prefect results)."
  type        = list(string)
}
