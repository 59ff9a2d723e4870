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

# A VLAN that reaches the physical network: each host's eth1 is a trunk to
# the top-of-rack switch (several VLAN networks can share it). The hosts
# serve DHCP to their own VMs; the router at 10.100.0.1 is on the switch.
resource "kvm_network" "servers" {
  name = "servers"
  vlan = 200
  subnet = {
    cidr        = "10.100.0.0/24"
    gateway     = "10.100.0.1"
    dns_servers = ["10.100.0.1"]
  }
  dhcp = true
  uplinks = {
    host-a = "eth1"
    host-b = "eth1"
  }
}

# Port security is on by default: every VM port sends only from its own MAC
# and, where its address is known (static ipv4_address or DHCP
# reservation), from that address. A segment for routers that fail
# addresses over between them (VRRP) turns it off.
resource "kvm_network" "transit" {
  name          = "transit"
  vlan          = 300
  port_security = false
}
