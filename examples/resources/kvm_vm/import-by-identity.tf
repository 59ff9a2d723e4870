# Terraform >= 1.12: import by identity (the VM's host and name).
import {
  to = kvm_vm.web
  identity = {
    host = "host-a"
    name = "web-1"
  }
}
