# Three web VMs on three different hosts, two database VMs together on a
# host in zone "b". `terraform plan` shows the chosen hosts.
resource "kvm_cluster_placement" "web" {
  strategy = "spread"

  request = {
    "web-1" = { vcpu = 2, memory_mib = 2048, anti_affinity_group = "web" }
    "web-2" = { vcpu = 2, memory_mib = 2048, anti_affinity_group = "web" }
    "web-3" = { vcpu = 2, memory_mib = 2048, anti_affinity_group = "web" }
    "db-1"  = { vcpu = 4, memory_mib = 8192, affinity_group = "db", host_labels = { zone = "b" } }
    "db-2"  = { vcpu = 4, memory_mib = 8192, affinity_group = "db", host_labels = { zone = "b" } }
  }
}

resource "kvm_vm" "web_1" {
  name       = "web-1"
  host       = kvm_cluster_placement.web.assignments["web-1"]
  vcpu       = 2
  memory_mib = 2048
}

# A VM with the GPU its hosts name gpu0 (kvm-hostd --pci-device
# gpu0=0000:01:00.0), on whichever host has one: each host labels itself
# pci.gpu0 = "true" for it.
resource "kvm_cluster_placement" "gpu" {
  request = {
    "train-1" = { vcpu = 8, memory_mib = 32768, host_labels = { "pci.gpu0" = "true" } }
  }
}

resource "kvm_vm" "train_1" {
  name        = "train-1"
  host        = kvm_cluster_placement.gpu.assignments["train-1"]
  vcpu        = 8
  memory_mib  = 32768
  pci_devices = ["gpu0"]
  migration   = "replace" # a VM with passthrough devices cannot migrate
}
