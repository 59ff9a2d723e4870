# Terraform >= 1.12: import by identity (host, VM name and snapshot name).
import {
  to = kvm_snapshot.before_upgrade
  identity = {
    host = "host-a"
    vm   = "web-1"
    name = "before-upgrade"
  }
}
