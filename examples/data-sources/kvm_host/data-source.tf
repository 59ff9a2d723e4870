data "kvm_host" "a" {
  name = "host-a"
}

output "host_a_free_memory_mib" {
  value = data.kvm_host.a.free_memory_mib
}
