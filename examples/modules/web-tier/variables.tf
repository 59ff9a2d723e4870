variable "name_prefix" {
  description = "Prefix of every VM and disk name; VMs are named <name_prefix>-1, <name_prefix>-2, ..."
  type        = string
}

# `count` is a reserved variable name in Terraform, hence instance_count.
variable "instance_count" {
  description = "Number of web VMs."
  type        = number
  default     = 3
  validation {
    condition     = var.instance_count >= 0 && floor(var.instance_count) == var.instance_count
    error_message = "instance_count must be a whole number >= 0."
  }
}

variable "vcpu" {
  description = "vCPUs per VM."
  type        = number
  default     = 1
}

variable "memory_mib" {
  description = "Memory per VM in MiB."
  type        = number
  default     = 512
}

variable "hosts" {
  description = "Candidate hosts (names from the provider's hosts). null means every configured host. Required when base_image_url is set, since a base disk is created on each of them."
  type        = set(string)
  default     = null
}

variable "host_labels" {
  description = "Labels a host must carry to receive one of these VMs, e.g. { zone = \"b\" }."
  type        = map(string)
  default     = {}
}

variable "strategy" {
  description = "Placement strategy: \"spread\" or \"pack\". Anti-affinity keeps the VMs on distinct hosts either way."
  type        = string
  default     = "spread"
}

variable "base_disk_ids" {
  description = "Per host, the ID (<host>/<pool>/<name>) of the base disk to clone root disks from. A linked clone must be on the same host as its base, so every host a VM may land on needs an entry. Ignored when base_image_url is set."
  type        = map(string)
  default     = {}
}

variable "base_image_url" {
  description = "http(s) URL of a qcow2 image. When set, the module creates a base disk from it on each of var.hosts (fetched by the host itself) and clones root disks from those."
  type        = string
  default     = null
}

variable "pool" {
  description = "Storage pool of the disks."
  type        = string
  default     = "default"
}

variable "disk_size_mib" {
  description = "Size of each root disk in MiB; at least the base image's size."
  type        = number
  default     = 10240
}

variable "network" {
  description = "kvm_network the VMs attach to; null for no NIC."
  type        = string
  default     = null
}

variable "running" {
  description = "Whether the VMs run."
  type        = bool
  default     = true
}
