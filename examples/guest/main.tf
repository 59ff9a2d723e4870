# What `make demo-real` applies: a VM you can log into. The host fetches the
# guest image (scripts/guest-image.sh: Debian 12 with cloud-init and
# qemu-guest-agent) from image_url; the VM boots from a linked clone of it,
# and cloud-init gives it a hostname, the SSH key for user "debian" and its
# static ipv4_address (through the network-config the host generates). The
# apply waits until the guest agent reports the address. The host comes from
# KVM_HOSTS and the token from KVM_TOKEN.
terraform {
  required_providers {
    kvm = { source = "kvmfleet/kvm" }
  }
}

provider "kvm" {}

variable "host" {
  description = "The kvm-hostd host (a name in KVM_HOSTS) everything goes on."
  type        = string
  default     = "host-a"
}

variable "image_url" {
  description = "http(s) URL of the guest image (qcow2) the host downloads."
  type        = string
}

variable "ssh_public_key" {
  description = "authorized_keys line for the guest's user debian."
  type        = string
}

variable "subnet" {
  description = "The network's IPv4 subnet."
  type        = string
  default     = "10.30.0.0/24"
}

variable "address" {
  description = "The guest's static IPv4 address, in subnet."
  type        = string
  default     = "10.30.0.10"
}

resource "kvm_network" "lan" {
  name   = "guest-lan"
  hosts  = [var.host]
  subnet = { cidr = var.subnet }
}

resource "kvm_disk" "image" {
  name       = "debian-12-guest"
  host       = var.host
  format     = "qcow2"
  source_url = var.image_url
}

resource "kvm_disk" "root" {
  name         = "demo-guest-root"
  host         = var.host
  base_disk_id = kvm_disk.image.id
}

locals {
  mac = "52:54:00:30:00:10"
}

resource "kvm_vm" "guest" {
  name       = "demo-guest"
  host       = var.host
  vcpu       = 1
  memory_mib = 512
  disks      = [{ disk_id = kvm_disk.root.id }]
  network_interfaces = [{
    network      = kvm_network.lan.name
    mac          = local.mac
    ipv4_address = var.address
  }]
  # Create returns once the guest agent reports the address (a TCG boot
  # takes a minute or two).
  wait_for_ip = { timeout = "10m" }
  cloud_init = {
    meta_data = "instance-id: demo-guest\nlocal-hostname: demo-guest\n"
    user_data = <<-EOT
      #cloud-config
      users:
        - name: debian
          shell: /bin/bash
          lock_passwd: true
          ssh_authorized_keys:
            - ${var.ssh_public_key}
    EOT
  }
}

output "vm" {
  value = {
    name  = kvm_vm.guest.name
    host  = kvm_vm.guest.host
    uuid  = kvm_vm.guest.id
    state = kvm_vm.guest.state
    disk  = "${kvm_disk.root.id} (linked clone of ${kvm_disk.image.id})"
  }
}

output "address" {
  description = "The guest's address: ssh debian@<address> with the key's private half."
  value       = kvm_vm.guest.ipv4_address
}

output "bridge" {
  description = "The OVS bridge the guest's NIC is on."
  value       = kvm_network.lan.bridge
}
