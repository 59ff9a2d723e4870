# Reboot web-1 on demand:
#   terraform apply -invoke=action.kvm_vm_power.reboot_web
action "kvm_vm_power" "reboot_web" {
  config {
    vm_id = "${kvm_vm.web.host}/${kvm_vm.web.name}" # or kvm_vm.web.id (its UUID)
    state = "rebooted"
  }
}

# Stop it for maintenance (terraform apply -invoke=action.kvm_vm_power.stop_web).
# The kvm_vm still says running = true: the next plain `terraform apply`
# starts it again.
action "kvm_vm_power" "stop_web" {
  config {
    vm_id = "${kvm_vm.web.host}/${kvm_vm.web.name}"
    state = "stopped"
  }
}

# Reboot web-1 whenever its application config changes, from a trigger.
resource "terraform_data" "app_config" {
  input = filesha256("${path.module}/app.conf")

  lifecycle {
    action_trigger {
      events  = [after_update]
      actions = [action.kvm_vm_power.reboot_web]
    }
  }
}
