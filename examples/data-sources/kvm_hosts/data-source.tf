data "kvm_hosts" "all" {}

# Hosts that are up, with their free memory.
output "healthy_hosts" {
  value = {
    for h in data.kvm_hosts.all.hosts : h.name => h.free_memory_mib if h.healthy
  }
}
