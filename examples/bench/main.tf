# The workload `make bench` (scripts/bench.sh) times: one 64 MiB qcow2 base
# and n VMs (64 MiB, 1 vCPU, running), each on its own linked clone of the
# base. The VMs have no OS, so they never answer an ACPI shutdown: with
# shutdown_timeout = 0 destroy powers them off at once instead of waiting.
# The host comes from KVM_HOSTS and the token from KVM_TOKEN.
terraform {
  required_providers {
    kvm = { source = "kvmfleet/kvm" }
  }
}

provider "kvm" {}

variable "n" {
  description = "How many VMs (and linked clones) to create."
  type        = number
  default     = 10
}

variable "host" {
  description = "The kvm-hostd host (a name in KVM_HOSTS) everything goes on."
  type        = string
  default     = "bench"
}

variable "prefix" {
  description = "Name prefix of every disk and VM."
  type        = string
  default     = "tfbench"
}

resource "kvm_disk" "base" {
  name     = "${var.prefix}-base"
  host     = var.host
  size_mib = 64
  format   = "qcow2"
}

resource "kvm_disk" "clone" {
  count        = var.n
  name         = format("%s-vm-%03d-root", var.prefix, count.index)
  host         = var.host
  format       = "qcow2"
  base_disk_id = kvm_disk.base.id
}

resource "kvm_vm" "vm" {
  count            = var.n
  name             = format("%s-vm-%03d", var.prefix, count.index)
  host             = var.host
  vcpu             = 1
  memory_mib       = 64
  running          = true
  shutdown_timeout = 0
  disks            = [{ disk_id = kvm_disk.clone[count.index].id }]
}
