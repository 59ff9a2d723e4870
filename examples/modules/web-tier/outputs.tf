output "vm_hosts" {
  description = "VM name -> host it was placed on."
  value       = kvm_cluster_placement.this.assignments
}

output "vm_ids" {
  description = "VM name -> kvm_vm ID (domain UUID)."
  value       = { for n, vm in kvm_vm.this : n => vm.id }
}

output "disk_ids" {
  description = "VM name -> root disk ID (<host>/<pool>/<name>)."
  value       = { for n, d in kvm_disk.root : n => d.id }
}
