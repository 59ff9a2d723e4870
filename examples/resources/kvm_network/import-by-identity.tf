# Terraform >= 1.12: import by identity (the network name).
import {
  to = kvm_network.lan
  identity = {
    name = "lan"
  }
}
