# A reusable web tier: N identical VMs spread with anti-affinity across the
# pool, each booting from a linked clone of a base image on its own host.

terraform {
  required_providers {
    kvm = { source = "kvmfleet/kvm" }
  }
}

locals {
  names = [for i in range(var.instance_count) : "${var.name_prefix}-${i + 1}"]

  # Host -> base disk ID, either created here from base_image_url or given.
  base_disk_ids = var.base_image_url == null ? var.base_disk_ids : { for h, d in kvm_disk.base : h => d.id }
}

resource "kvm_disk" "base" {
  for_each = var.base_image_url == null ? toset([]) : var.hosts

  name       = "${var.name_prefix}-base"
  host       = each.key
  pool       = var.pool
  format     = "qcow2"
  source_url = var.base_image_url

  lifecycle {
    precondition {
      condition     = var.hosts != null
      error_message = "Set hosts when base_image_url is set: a base disk is created on each of them."
    }
  }
}

resource "kvm_cluster_placement" "this" {
  hosts    = var.hosts
  strategy = var.strategy
  request = {
    for n in local.names : n => {
      vcpu                = var.vcpu
      memory_mib          = var.memory_mib
      anti_affinity_group = var.name_prefix
      host_labels         = length(var.host_labels) > 0 ? var.host_labels : null
    }
  }
}

resource "kvm_disk" "root" {
  for_each = toset(local.names)

  name         = "${each.key}-root"
  host         = kvm_cluster_placement.this.assignments[each.key]
  pool         = var.pool
  format       = "qcow2"
  size_mib     = var.disk_size_mib
  base_disk_id = local.base_disk_ids[kvm_cluster_placement.this.assignments[each.key]]
}

resource "kvm_vm" "this" {
  for_each = toset(local.names)

  name       = each.key
  host       = kvm_cluster_placement.this.assignments[each.key]
  vcpu       = var.vcpu
  memory_mib = var.memory_mib
  running    = var.running

  disks              = [{ disk_id = kvm_disk.root[each.key].id }]
  network_interfaces = var.network == null ? [] : [{ network = var.network }]
}
