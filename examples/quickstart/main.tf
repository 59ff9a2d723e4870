# The quickstart that `make demo` applies: a network, a base disk per host with
# linked clones, web VMs placed by kvm_cluster_placement with anti-affinity (one
# per host), and a snapshot. Hosts come from KVM_HOSTS and the token from
# KVM_TOKEN, so the same files work against any fleet.
terraform {
  required_providers {
    kvm = { source = "kvmfleet/kvm" }
  }
}

provider "kvm" {}

variable "web_count" {
  description = "How many web VMs to place, one per host (anti-affinity)."
  type        = number
  default     = 3
}

data "kvm_hosts" "all" {}

locals {
  hosts = sort([for h in data.kvm_hosts.all.hosts : h.name if h.healthy])
}

# One L2 segment across every host: VLAN-tagged VM ports on an OVS bridge,
# with the hosts joined by VXLAN tunnels.
resource "kvm_network" "app" {
  name    = "app"
  vlan    = 100
  overlay = "vxlan"
  vni     = 1001
  mtu     = 1450
}

# Decided at plan time: `terraform plan` shows where each VM will land.
resource "kvm_cluster_placement" "web" {
  hosts    = local.hosts
  strategy = "spread"
  request = {
    for i in range(1, var.web_count + 1) : "web-${i}" => {
      vcpu                = 1
      memory_mib          = 64
      anti_affinity_group = "web"
    }
  }
}

# A golden image on every host; VMs boot from linked clones of it (qcow2
# overlays: O(1) to create, whatever the base's size).
resource "kvm_disk" "base" {
  for_each = toset(local.hosts)
  name     = "golden-base"
  host     = each.key
  size_mib = 64
}

resource "kvm_disk" "web" {
  for_each     = kvm_cluster_placement.web.request
  name         = "${each.key}-root"
  host         = kvm_cluster_placement.web.assignments[each.key]
  base_disk_id = kvm_disk.base[kvm_cluster_placement.web.assignments[each.key]].id
}

resource "kvm_vm" "web" {
  for_each   = kvm_cluster_placement.web.request
  name       = each.key
  host       = kvm_cluster_placement.web.assignments[each.key]
  vcpu       = each.value.vcpu
  memory_mib = each.value.memory_mib
  disks      = [{ disk_id = kvm_disk.web[each.key].id }]
  network_interfaces = [{
    network = kvm_network.app.name
  }]
  description = "quickstart web server ${each.key}"
  tags        = { role = "web", team = "platform" }
  # The quickstart's VMs have no OS to answer an ACPI shutdown.
  shutdown_timeout = 0
}

resource "kvm_snapshot" "before_upgrade" {
  vm_id       = "${kvm_vm.web["web-1"].host}/${kvm_vm.web["web-1"].name}"
  name        = "before-upgrade"
  description = "web-1 before the first upgrade"
  # web-1 runs: a running VM's snapshot is a full checkpoint, with memory.
  include_memory = true
}

output "placement" {
  description = "Where each VM landed."
  value       = kvm_cluster_placement.web.assignments
}

output "vms" {
  value = {
    for k, vm in kvm_vm.web : k => {
      host  = vm.host
      uuid  = vm.id
      state = vm.state
      mac   = vm.network_interfaces[0].mac
      disk  = vm.disks[0].disk_id
    }
  }
}

output "disks" {
  value = { for k, d in kvm_disk.web : d.id => "linked clone of ${d.base_disk_id}" }
}

output "network" {
  value = {
    name   = kvm_network.app.name
    bridge = kvm_network.app.bridge
    hosts  = kvm_network.app.host_status
  }
}

output "snapshot" {
  value = "${kvm_snapshot.before_upgrade.id} (created ${kvm_snapshot.before_upgrade.created_at})"
}

# The hosts' capacity and identity. Live usage (free_memory_mib, vm_count,
# allocated_*) is left out: it changes as VMs come and go, and an output of it
# would make every plan non-empty.
output "hosts" {
  description = "Every host's capacity and labels, as its kvm-hostd reports them."
  value = {
    for h in data.kvm_hosts.all.hosts : h.name => {
      healthy    = h.healthy
      cpus       = h.cpus
      memory_mib = h.memory_mib
      labels     = h.labels
      tunnel_ip  = h.tunnel_ip
      version    = h.version
    }
  }
}
