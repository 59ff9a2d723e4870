# A Windows-11-ready VM: UEFI with Secure Boot (Microsoft's keys enrolled)
# and a TPM 2.0, the three things Windows 11's setup checks besides CPU and
# memory. The host needs the ovmf, swtpm and swtpm-tools packages; one
# without them refuses the VM with an error that says what to install.
#
# The VM boots a prepared (sysprepped) Windows 11 image the host fetches
# from image_url; its root disk is a linked clone of it. Windows ships no
# virtio drivers, so the disk is on SATA and the NIC an e1000e; switch them
# to virtio once the image has the virtio-win drivers.
#
# Its NVRAM (boot entries, Secure Boot keys) and TPM state (BitLocker keys,
# Windows Hello) stay with the VM: across restarts, through a migration to
# another host (change host), and they are deleted with it.
terraform {
  required_providers {
    kvm = { source = "kvmfleet/kvm" }
  }
}

provider "kvm" {}

variable "host" {
  description = "The kvm-hostd host (a name in KVM_HOSTS) the VM runs on."
  type        = string
  default     = "host-a"
}

variable "image_url" {
  description = "http(s) URL of a prepared Windows 11 image (qcow2) the host downloads."
  type        = string
}

resource "kvm_network" "lan" {
  name   = "win-lan"
  hosts  = [var.host]
  subnet = { cidr = "10.40.0.0/24" }
  dhcp   = true
}

resource "kvm_disk" "image" {
  name       = "windows-11-base"
  host       = var.host
  format     = "qcow2"
  source_url = var.image_url
}

resource "kvm_disk" "root" {
  name         = "win11-root"
  host         = var.host
  base_disk_id = kvm_disk.image.id
  size_mib     = 65536 # Windows 11 wants at least 64 GiB
}

resource "kvm_vm" "win11" {
  name       = "win11"
  host       = var.host
  vcpu       = 2    # Windows 11: at least 2 cores
  memory_mib = 4096 # and 4 GiB

  firmware    = "efi"
  secure_boot = true
  tpm         = { version = "2.0" }

  disks              = [{ disk_id = kvm_disk.root.id, bus = "sata" }]
  network_interfaces = [{ network = kvm_network.lan.name, model = "e1000e" }]

  # Windows has no qemu-guest-agent unless installed with virtio-win.
  guest_agent = false
  # Windows can take a while to shut down for a restart (updates).
  shutdown_timeout = 300
}

output "vm_id" {
  value = kvm_vm.win11.id
}
