package service

import (
	"testing"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

func TestDHCPBindings(t *testing.T) {
	n := api.Network{Name: "lan", DHCP: true, DHCPServerIP: "10.0.0.254",
		Subnet: &api.Subnet{CIDR: "10.0.0.0/24", Gateway: "10.0.0.1"}}
	vms := []api.VM{
		{Name: "a", VMSpec: api.VMSpec{Interfaces: []api.VMInterface{
			{Network: "lan", MAC: "52:54:00:00:00:0A", IPv4Address: "10.0.0.10"},
			{Network: "other", MAC: "52:54:00:00:00:0b"},
		}}},
		{Name: "b", VMSpec: api.VMSpec{Interfaces: []api.VMInterface{{Network: "lan", MAC: "52:54:00:00:00:0c"}}}},
		// the same static address twice: only the first (by MAC) gets it
		{Name: "c", VMSpec: api.VMSpec{Interfaces: []api.VMInterface{{Network: "lan", MAC: "52:54:00:00:00:0d", IPv4Address: "10.0.0.10"}}}},
		// a reserved address is never handed out as a static one
		{Name: "d", VMSpec: api.VMSpec{Interfaces: []api.VMInterface{{Network: "lan", MAC: "52:54:00:00:00:0e", IPv4Address: "10.0.0.254"}}}},
	}
	got := dhcpBindings(n, vms)
	if len(got) != 2 {
		t.Fatalf("bindings %+v, want 2", got)
	}
	if got[0] != (api.Lease{MAC: "52:54:00:00:00:0a", IP: "10.0.0.10", VM: "a"}) {
		t.Fatalf("static binding %+v", got[0])
	}
	d := got[1]
	if d.MAC != "52:54:00:00:00:0c" || d.VM != "b" {
		t.Fatalf("derived binding %+v", d)
	}
	if err := api.ValidateStaticIPv4(*n.Subnet, d.IP, derivedReserve(*n.Subnet)...); err != nil || d.IP == "10.0.0.10" {
		t.Fatalf("derived address %s: %v", d.IP, err)
	}
	// Stable: the same inputs give the same address.
	if again := dhcpBindings(n, vms); again[1] != d {
		t.Fatalf("derived address changed: %+v then %+v", d, again[1])
	}
	if len(derivedReserve(*n.Subnet)) != api.MaxDHCPServers {
		t.Fatalf("reserve of a /24: %d addresses", len(derivedReserve(*n.Subnet)))
	}
	small := api.Subnet{CIDR: "10.0.0.0/29", Gateway: "10.0.0.1"}
	if r := derivedReserve(small); len(r) != 3 || r[0] != "10.0.0.6" {
		t.Fatalf("reserve of a /29: %v", r)
	}
}
