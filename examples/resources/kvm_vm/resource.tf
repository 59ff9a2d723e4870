# A base image, fetched by the host itself.
resource "kvm_disk" "debian" {
  name       = "debian-12-base"
  host       = "host-a"
  source_url = "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2"
}

# The VM's root disk: a linked clone (qcow2 overlay) of the base, created in O(1).
resource "kvm_disk" "web_root" {
  name         = "web-1-root"
  host         = "host-a"
  base_disk_id = kvm_disk.debian.id
  size_mib     = 10240
}

# A data disk on virtio-scsi; the guest's fstrim gives freed space back.
resource "kvm_disk" "web_data" {
  name     = "web-1-data"
  host     = "host-a"
  format   = "qcow2"
  size_mib = 20480
}

# Write-only (Terraform >= 1.11): never stored in state or plan.
variable "console_password" {
  type      = string
  sensitive = true
  ephemeral = true
}

resource "kvm_network" "lan" {
  name = "lan"
  vlan = 100
}

resource "kvm_vm" "web" {
  name           = "web-1"
  host           = "host-a"
  vcpu           = 2
  memory_mib     = 2048
  max_memory_mib = 4096 # memory_mib can grow live up to this

  cpu = {
    mode    = "host-passthrough"
    sockets = 1
    cores   = 2
  }

  disks = [
    # cache defaults to "none" and discard to "unmap".
    { disk_id = kvm_disk.web_root.id, io = "native" },
    { disk_id = kvm_disk.web_data.id, bus = "scsi", cache = "writeback", io = "io_uring" },
  ]

  network_interfaces = [
    # ipv4_address = "10.20.0.10" would give this NIC a static address
    # inside the network's subnet (delivered through cloud-init).
    { network = kvm_network.lan.name, queues = 2 },
  ]

  # A VNC console on the host's loopback (reach it through an SSH tunnel);
  # its port is graphics.port once the VM runs. rng (default true) gives
  # the guest /dev/hwrng.
  graphics = {
    type                = "vnc"
    password_wo         = var.console_password
    password_wo_version = 1 # bump to apply a new password (live)
  }

  # The guest runs qemu-guest-agent (guest_agent defaults to true): wait until
  # every NIC reports an IPv4 address, so ipv4_address is known after apply.
  wait_for_ip = {
    timeout = "5m"
  }

  cloud_init = {
    meta_data = "instance-id: web-1\nlocal-hostname: web-1\n"
    user_data = <<-EOT
      #cloud-config
      ssh_authorized_keys:
        - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyOnly web@example
      packages: [nginx]
    EOT
  }

  autostart        = true
  shutdown_timeout = 120
  description      = "Front-end web server"
  tags = {
    team = "web"
    env  = "prod"
  }
}

output "web_mac" {
  value = kvm_vm.web.network_interfaces[0].mac
}

output "web_console" {
  value = kvm_vm.web.graphics.address
}

output "web_ip" {
  value = kvm_vm.web.ipv4_address
}
