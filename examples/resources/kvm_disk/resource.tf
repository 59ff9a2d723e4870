# A base image, downloaded by host-a itself (it never passes through the
# machine running Terraform). Pin an image version and set
# source_checksum = "sha256:<published sum>" to have the host verify it.
resource "kvm_disk" "debian" {
  name       = "debian-12-base"
  host       = "host-a"
  format     = "qcow2"
  source_url = "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2"
}

# A linked clone: a qcow2 overlay on the base, created in O(1) without
# copying. Its size defaults to the base's; here it is grown to 20 GiB.
resource "kvm_disk" "web_root" {
  name         = "web-1-root"
  host         = kvm_disk.debian.host
  base_disk_id = kvm_disk.debian.id
  size_mib     = 20480
}

# An empty data disk with I/O limits. Raising size_mib later grows it in
# place (online when a running VM attaches it); lowering it fails the plan.
resource "kvm_disk" "data" {
  name     = "data-1"
  host     = "host-a"
  size_mib = 51200

  iotune = {
    read_bytes_sec  = 104857600 # 100 MiB/s
    write_bytes_sec = 52428800  # 50 MiB/s
    read_iops_sec   = 2000
    write_iops_sec  = 1000
  }

  timeouts {
    create = "10m"
  }
}

# A LUKS-encrypted data disk: host-a holds the master key "prod"
# (kvm-hostd --key-dir, file prod.key); Terraform only names it.
resource "kvm_disk" "secret" {
  name       = "secret-1"
  host       = "host-a"
  size_mib   = 10240
  encryption = { key = "prod" }
}
