# Moving a VM and its volume from the dmacvicar/libvirt provider
# (libvirt_domain, libvirt_volume) to kvm_vm and kvm_disk, in one apply,
# without touching the running guest. The host must run kvm-hostd on the
# same libvirt (its storage pool "default" is the libvirt pool the volume
# is in). See the guide "Migrating from the libvirt provider".

terraform {
  required_providers {
    kvm = { source = "kvmfleet/kvm" }
  }
}

provider "kvm" {}

# 1. The libvirt provider lets go of its objects without destroying them
# (Terraform >= 1.7). Its own resource blocks are deleted from the
# configuration; init still installs that provider for this one apply,
# because the state names it.
removed {
  from = libvirt_domain.db
  lifecycle {
    destroy = false
  }
}

removed {
  from = libvirt_volume.db_root
  lifecycle {
    destroy = false
  }
}

# 2. The kvm provider adopts the same objects. With Terraform >= 1.12 the
# import blocks may give the identity instead of the ID:
#   identity = { host = "host-a", pool = "default", name = "db-root.qcow2" }
import {
  to = kvm_disk.db_root
  id = "host-a/default/db-root.qcow2"
}

resource "kvm_disk" "db_root" {
  name     = "db-root.qcow2"
  host     = "host-a"
  format   = "qcow2"
  size_mib = 10240
}

import {
  to = kvm_vm.db
  id = "host-a/db"
}

# Written to match the domain as it is, so the plan after the import is
# empty: the libvirt provider's domains have no guest-agent channel or RNG
# unless asked for, and their disks use libvirt's default cache and discard
# modes. Change these afterwards like any other attribute.
resource "kvm_vm" "db" {
  name        = "db"
  host        = "host-a"
  vcpu        = 2
  memory_mib  = 2048
  guest_agent = false
  rng         = false

  disks = [
    { disk_id = kvm_disk.db_root.id, cache = "writeback", discard = "ignore" },
  ]

  # The domain's NIC on the libvirt network "default" is not a kvm_network:
  # the import names it in a warning and leaves it on the domain. Move it
  # onto a kvm_network (virsh detach-interface, then network_interfaces
  # here) before changing this VM: kvm-hostd refuses to redefine a domain
  # with devices it does not manage.
}
