# Terraform >= 1.12: import by identity (the current assignments, key=host
# pairs sorted by key, as in the import ID).
import {
  to = kvm_cluster_placement.web
  identity = {
    assignments = "web-1=host-a,web-2=host-b"
  }
}
