# terraform query (Terraform >= 1.14) lists the volumes of every storage
# pool of the provider's hosts, including ones made with virsh vol-create
# or qemu-img (VMs' cloud-init seed images are part of their kvm_vm).
list "kvm_disk" "all" {
  provider = kvm
}

# host-b's volumes whose names start with "legacy-", with their state for
# -generate-config-out.
list "kvm_disk" "legacy" {
  provider         = kvm
  include_resource = true

  config {
    host        = "host-b"
    name_prefix = "legacy-"
  }
}

# The disks attached to VMs tagged team = "web".
list "kvm_disk" "web" {
  provider = kvm

  config {
    tags = { team = "web" }
  }
}
