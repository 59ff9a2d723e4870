package service

import (
	"testing"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// The address a port may send from is the one the NIC is known to have:
// static first, else its DHCP reservation, else none (MAC check only).
func TestKnownAddresses(t *testing.T) {
	sub := &api.Subnet{CIDR: "10.0.0.0/24", Gateway: "10.0.0.1"}
	vms := []api.VM{
		{Name: "a", VMSpec: api.VMSpec{Interfaces: []api.VMInterface{
			{Network: "lan", MAC: "52:54:00:00:00:0A", IPv4Address: "10.0.0.10"},
			{Network: "other", MAC: "52:54:00:00:00:0b", IPv4Address: "10.0.0.11"},
		}}},
		{Name: "b", VMSpec: api.VMSpec{Interfaces: []api.VMInterface{{Network: "lan", MAC: "52:54:00:00:00:0c"}}}},
	}
	dhcpNet := api.Network{Name: "lan", DHCP: true, DHCPServerIP: "10.0.0.254", Subnet: sub}
	got := knownAddresses(dhcpNet, vms)
	if got["52:54:00:00:00:0a"] != "10.0.0.10" {
		t.Fatalf("static address: %v", got)
	}
	if _, ok := got["52:54:00:00:00:0b"]; ok {
		t.Fatalf("NIC of another network listed: %v", got)
	}
	var reserved string
	for _, l := range dhcpBindings(dhcpNet, vms) {
		if l.MAC == "52:54:00:00:00:0c" {
			reserved = l.IP
		}
	}
	if reserved == "" || got["52:54:00:00:00:0c"] != reserved {
		t.Fatalf("DHCP reservation %q, known %v", reserved, got)
	}
	plain := knownAddresses(api.Network{Name: "lan", Subnet: sub}, vms)
	if len(plain) != 1 || plain["52:54:00:00:00:0a"] != "10.0.0.10" {
		t.Fatalf("without DHCP only static addresses are known: %v", plain)
	}
}
