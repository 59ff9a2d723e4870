# Terraform >= 1.12: import by identity (host, storage pool and volume name).
import {
  to = kvm_disk.web_data
  identity = {
    host = "host-a"
    pool = "default"
    name = "web-1-data"
  }
}
