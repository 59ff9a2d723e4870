# terraform query (Terraform >= 1.14) lists every domain on the provider's
# hosts, including ones defined with virsh or another tool.
list "kvm_vm" "all" {
  provider = kvm
}

# Only host-a's VMs whose names start with "legacy-", with their full state:
# `terraform query -generate-config-out=adopt.tf` writes import and resource
# blocks that adopt them.
list "kvm_vm" "legacy" {
  provider         = kvm
  include_resource = true

  config {
    host        = "host-a"
    name_prefix = "legacy-"
  }
}

# VMs carrying these tags (domains made outside Terraform have none).
list "kvm_vm" "web" {
  provider = kvm

  config {
    tags = { team = "web" }
  }
}
