# The base image the platform team's state owns (its kvm_disk.id), used
# here for linked clones without managing it.
data "kvm_disk" "ubuntu" {
  id = "host-a/default/ubuntu-24.04-base"
}

resource "kvm_disk" "app_root" {
  name         = "app-1-root"
  host         = data.kvm_disk.ubuntu.host
  base_disk_id = data.kvm_disk.ubuntu.id
  size_mib     = max(data.kvm_disk.ubuntu.size_mib, 20480)
}
