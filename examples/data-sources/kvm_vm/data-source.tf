# A VM another state owns (or one made with virsh), by host and name.
data "kvm_vm" "db" {
  host = "host-a"
  name = "db-1"
}

output "db_address" {
  value = data.kvm_vm.db.ipv4_address
}

output "db_state" {
  value = data.kvm_vm.db.state # running, shutoff, ...
}
