# A snapshot before an upgrade. vm_id is "<host>/<vm name>", the kvm_vm's
# import ID...
resource "kvm_snapshot" "before_upgrade" {
  vm_id       = "${kvm_vm.web.host}/${kvm_vm.web.name}"
  name        = "before-upgrade"
  description = "web-1 before the 2.4 upgrade"
  # web-1 runs, so the snapshot includes its memory: libvirt cannot take a
  # disks-only snapshot of a running VM (that needs running = false).
  include_memory = true

  # Change this value (e.g. to a timestamp or a ticket number) to revert
  # the VM to this snapshot in place; setting it at creation does not revert.
  revert_trigger = var.web_revert_ticket
}

# ... or the VM's UUID (kvm_vm's id), looked up on every configured host.
resource "kvm_snapshot" "with_memory" {
  vm_id          = kvm_vm.web.id
  name           = "running-checkpoint"
  include_memory = true

  depends_on = [kvm_snapshot.before_upgrade]
}

variable "web_revert_ticket" {
  type        = string
  default     = null
  description = "Set to a new value to revert web-1 to its before-upgrade snapshot."
}
