# Reads every host's live inventory. Hosts come from KVM_HOSTS and the token
# from KVM_TOKEN, so the same file works against any fleet.
terraform {
  required_providers {
    kvm = { source = "kvmfleet/kvm" }
  }
}

provider "kvm" {}

data "kvm_hosts" "all" {}

output "hosts" {
  value = {
    for h in data.kvm_hosts.all.hosts : h.name => {
      healthy              = h.healthy
      cpus                 = h.cpus
      memory_mib           = h.memory_mib
      free_memory_mib      = h.free_memory_mib
      allocated_vcpu       = h.allocated_vcpu
      allocated_memory_mib = h.allocated_memory_mib
      cpu_overcommit       = h.cpu_overcommit
      memory_overcommit    = h.memory_overcommit
      labels               = h.labels
      tunnel_ip            = h.tunnel_ip
      vm_count             = h.vm_count
      version              = h.version
    }
  }
}
