# A database VM laid out on a two-node host: each guest NUMA node takes its
# memory from one host node (strictly) and its vCPUs run on that node's
# CPUs; QEMU's emulator threads run on a CPU of their own, off the vCPUs;
# the memory comes from huge pages. The host needs free huge pages for all
# of memory_mib (kvm_host.hugepages shows them; the operator reserves them,
# e.g. sysctl vm.nr_hugepages=8192 for 16 GiB of 2 MiB pages), or it
# refuses the VM. Moving the emulator threads is live; changing hugepages
# or numa restarts the VM once. The host comes from KVM_HOSTS and the token
# from KVM_TOKEN.
terraform {
  required_providers {
    kvm = { source = "kvmfleet/kvm" }
  }
}

provider "kvm" {}

variable "host" {
  description = "The kvm-hostd host (a name in KVM_HOSTS), whose NUMA node 0 has CPUs 0-4 and node 1 CPUs 5-8."
  type        = string
  default     = "host-a"
}

variable "image_url" {
  description = "http(s) URL of the guest image (qcow2) the host downloads."
  type        = string
}

data "kvm_host" "db" {
  name = var.host
}

resource "kvm_disk" "base" {
  name       = "db-base"
  host       = var.host
  format     = "qcow2"
  source_url = var.image_url
}

resource "kvm_disk" "root" {
  name         = "db-root"
  host         = var.host
  base_disk_id = kvm_disk.base.id
  size_mib     = 20480
}

resource "kvm_vm" "db" {
  name       = "db-1"
  host       = var.host
  vcpu       = 8
  memory_mib = 16384
  hugepages  = true

  # Guest node 0 = vCPUs 0-3 on host node 0, guest node 1 = vCPUs 4-7 on
  # host node 1; a socket per node keeps the guest's topology consistent.
  numa = [
    { cpus = "0-3", memory_mib = 8192, host_nodes = "0" },
    { cpus = "4-7", memory_mib = 8192, host_nodes = "1" },
  ]
  cpu = {
    sockets          = 2
    cores            = 4
    threads          = 1
    pinning          = ["1", "2", "3", "4", "5", "6", "7", "8"]
    emulator_pinning = "0"
  }

  disks = [{ disk_id = kvm_disk.root.id }]
  cloud_init = {
    user_data = "#cloud-config\n"
    meta_data = "instance-id: db-1\nlocal-hostname: db-1\n"
  }
}

output "hugepages_free" {
  description = "The host's free huge pages, as it reports them."
  value       = data.kvm_host.db.hugepages
}
