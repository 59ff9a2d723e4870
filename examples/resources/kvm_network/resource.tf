# A VLAN on every configured host: VM ports get access tag 100.
resource "kvm_network" "lan" {
  name = "lan"
  vlan = 100
}

# One L2 segment across two hosts, joined by VXLAN tunnels between their
# tunnel IPs (kvm-hostd --tunnel-ip).
resource "kvm_network" "tenant" {
  name    = "tenant-42"
  hosts   = ["host-a", "host-b"]
  overlay = "vxlan"
  vni     = 4242
  mtu     = 1450
}
