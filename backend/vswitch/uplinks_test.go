package vswitch

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

func dhcpSpec(vlan int64, uplink string) api.NetworkSpec {
	return api.NetworkSpec{
		VLAN:         vlan,
		Subnet:       &api.Subnet{CIDR: "10.20.0.0/24", Gateway: "10.20.0.1", DNSServers: []string{"10.20.0.1", "9.9.9.9"}},
		DHCP:         true,
		DHCPServerIP: "10.20.0.254",
		Uplink:       uplink,
	}
}

// TestEmbeddedSubnetDHCPReadBack: subnet, DHCP and its port round-trip
// through OVSDB; a repeat sends nothing; turning DHCP off removes the port;
// deleting the DHCP port out of band reads back as DHCP off (drift).
func TestEmbeddedSubnetDHCPReadBack(t *testing.T) {
	s := openEmbedded(t)
	ctx := tctx(t)
	n, err := s.EnsureNetwork(ctx, "lan", dhcpSpec(42, ""), "")
	if err != nil {
		t.Fatal(err)
	}
	if n.Subnet == nil || n.Subnet.CIDR != "10.20.0.0/24" || n.Subnet.Gateway != "10.20.0.1" ||
		!slices.Equal(n.Subnet.DNSServers, []string{"10.20.0.1", "9.9.9.9"}) {
		t.Fatalf("subnet read back as %+v", n.Subnet)
	}
	if !n.DHCP || n.DHCPServerIP != "10.20.0.254" {
		t.Fatalf("dhcp read back as %v %q", n.DHCP, n.DHCPServerIP)
	}
	if len(n.Ports) != 0 {
		t.Fatalf("the DHCP port is listed as a VM port: %v", n.Ports)
	}
	dp := port(t, s, api.DHCPPortName("lan"))
	if dp.Tag == nil || *dp.Tag != 42 {
		t.Fatalf("DHCP port tag %v, want 42", dp.Tag)
	}
	if i := iface(t, s, api.DHCPPortName("lan")); i.Type != "internal" {
		t.Fatalf("DHCP interface type %q", i.Type)
	}
	before := s.txns.Load()
	if _, err := s.EnsureNetwork(ctx, "lan", dhcpSpec(42, ""), ""); err != nil {
		t.Fatal(err)
	}
	if d := s.txns.Load() - before; d != 0 {
		t.Fatalf("repeat sent %d transactions", d)
	}
	// The VLAN changes: the DHCP port follows, like VM ports do.
	if _, err := s.EnsureNetwork(ctx, "lan", dhcpSpec(43, ""), ""); err != nil {
		t.Fatal(err)
	}
	if dp := port(t, s, api.DHCPPortName("lan")); dp.Tag == nil || *dp.Tag != 43 {
		t.Fatalf("DHCP port tag %v after retag, want 43", dp.Tag)
	}
	// Out-of-band deletion of the port is drift.
	st, _ := s.loadBridge(ctx, api.BridgeName("lan"))
	tx := &txn{s: s}
	p := st.port(api.DHCPPortName("lan"))
	tx.deletePort(p)
	tx.bridgePorts(&st.br, nil, []string{p.port.UUID})
	if _, err := tx.commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.GetNetwork(ctx, "lan"); n.DHCP {
		t.Fatal("DHCP reads back on without its port")
	}
	if n, _ := s.EnsureNetwork(ctx, "lan", dhcpSpec(43, ""), ""); !n.DHCP {
		t.Fatal("apply did not repair the DHCP port")
	}
	// Off: the port goes, the subnet stays.
	spec := dhcpSpec(43, "")
	spec.DHCP, spec.DHCPServerIP = false, ""
	n, err = s.EnsureNetwork(ctx, "lan", spec, "")
	if err != nil {
		t.Fatal(err)
	}
	if n.DHCP || n.DHCPServerIP != "" || n.Subnet == nil {
		t.Fatalf("after dhcp off: %+v", n)
	}
	if s.getPort(ctx, api.DHCPPortName("lan")) != nil {
		t.Fatal("DHCP port left after dhcp off")
	}
	spec.Subnet = nil
	if n, _ = s.EnsureNetwork(ctx, "lan", spec, ""); n.Subnet != nil {
		t.Fatalf("subnet still read back after removal: %+v", n.Subnet)
	}
	if err := s.DeleteNetwork(ctx, "lan"); err != nil {
		t.Fatal(err)
	}
	if n := ownedRows(t, s); n != 0 {
		t.Fatalf("%d owned rows left", n)
	}
}

// TestEmbeddedUplinkShared: two VLAN networks share one uplink interface
// through one uplink bridge, each patch port passing only its VLAN (a
// network without vlan: untagged only); the bridge and interface are
// released with the last network; a deleted patch port reads back as no
// uplink (drift) and apply repairs it.
func TestEmbeddedUplinkShared(t *testing.T) {
	s := openEmbedded(t)
	ctx := tctx(t)
	ub := api.UplinkBridgeName("eth9")
	for name, vlan := range map[string]int64{"v100": 100, "v200": 200, "flat": 0} {
		n, err := s.EnsureNetwork(ctx, name, api.NetworkSpec{VLAN: vlan, Uplink: "eth9"}, "")
		if err != nil {
			t.Fatal(err)
		}
		if n.Uplink != "eth9" {
			t.Fatalf("%s: uplink read back as %q", name, n.Uplink)
		}
		if len(n.Ports) != 0 {
			t.Fatalf("%s: patch port listed as a VM port: %v", name, n.Ports)
		}
		bs, us := api.UplinkPatchNames(name)
		for _, pn := range []string{bs, us} {
			if p := port(t, s, pn); !slices.Equal(p.Trunks, []int{int(vlan)}) || p.Tag != nil {
				t.Fatalf("%s: port %s trunks %v tag %v, want trunks [%d]", name, pn, p.Trunks, p.Tag, vlan)
			}
		}
		if i := iface(t, s, us); i.Type != "patch" || i.Options["peer"] != bs {
			t.Fatalf("%s: %s type %q options %v", name, us, i.Type, i.Options)
		}
	}
	st, _ := s.loadBridge(ctx, ub)
	if st == nil || len(st.ports) != 4 {
		t.Fatalf("uplink bridge %s: %+v", ub, st)
	}
	if p := st.port("eth9"); p == nil || p.port.Tag != nil || len(p.port.Trunks) != 0 {
		t.Fatalf("the interface is not a trunk on %s: %+v", ub, p)
	}
	var bridges int
	root, _ := s.root(ctx)
	bridges = len(root.Bridges)
	if bridges != 4 {
		t.Fatalf("%d bridges, want 3 networks + 1 uplink", bridges)
	}

	// Drift: the uplink end of v100's patch pair deleted out of band.
	_, us := api.UplinkPatchNames("v100")
	tx := &txn{s: s}
	p := st.port(us)
	tx.deletePort(p)
	tx.bridgePorts(&st.br, nil, []string{p.port.UUID})
	if _, err := tx.commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.GetNetwork(ctx, "v100"); n.Uplink != "" {
		t.Fatalf("uplink reads back %q with its patch peer gone", n.Uplink)
	}
	if n, err := s.EnsureNetwork(ctx, "v100", api.NetworkSpec{VLAN: 100, Uplink: "eth9"}, ""); err != nil || n.Uplink != "eth9" {
		t.Fatalf("repair: %v %+v", err, n)
	}

	// Moving v100 to another interface leaves the others on eth9.
	if n, err := s.EnsureNetwork(ctx, "v100", api.NetworkSpec{VLAN: 100, Uplink: "eth8"}, ""); err != nil || n.Uplink != "eth8" {
		t.Fatalf("move: %v %+v", err, n)
	}
	if st, _ := s.loadBridge(ctx, ub); st == nil || len(st.ports) != 3 {
		t.Fatalf("eth9's bridge after the move: %+v", st)
	}
	// Removing the uplink from the map releases eth8's bridge.
	if n, err := s.EnsureNetwork(ctx, "v100", api.NetworkSpec{VLAN: 100}, ""); err != nil || n.Uplink != "" {
		t.Fatalf("remove: %v %+v", err, n)
	}
	if st, _ := s.loadBridge(ctx, api.UplinkBridgeName("eth8")); st != nil {
		t.Fatal("eth8's uplink bridge left after its only network let go")
	}
	bs, _ := api.UplinkPatchNames("v100")
	if s.getPort(ctx, bs) != nil {
		t.Fatal("network-side patch port left after removing the uplink")
	}
	for _, name := range []string{"v200", "flat"} {
		if err := s.DeleteNetwork(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if st, _ := s.loadBridge(ctx, ub); st != nil {
		t.Fatal("uplink bridge left after its last network was deleted")
	}
	if err := s.DeleteNetwork(ctx, "v100"); err != nil {
		t.Fatal(err)
	}
	if n := ownedRows(t, s); n != 0 {
		t.Fatalf("%d owned rows left", n)
	}
}

// TestEmbeddedUplinkForeignPort: an interface that is already a port of a
// bridge kvm-hostd does not manage is refused, and nothing is changed.
func TestEmbeddedUplinkForeignPort(t *testing.T) {
	s := openEmbedded(t)
	ctx := tctx(t)
	tx := &txn{s: s}
	pu := tx.insertPort(ctx, Port{Name: "eth7"}, Interface{Name: "eth7"})
	br := &Bridge{UUID: tx.name("b"), Name: "br-foreign", Ports: []string{pu}}
	tx.add(s.client.Create(br))
	root, _ := s.root(ctx)
	tx.add(s.client.Where(root).Mutate(root, model.Mutation{Field: &root.Bridges, Mutator: ovsdb.MutateOperationInsert, Value: []string{br.UUID}}))
	if _, err := tx.commit(ctx); err != nil {
		t.Fatal(err)
	}
	before := rowCounts(t, s)
	_, err := s.EnsureNetwork(ctx, "up", api.NetworkSpec{VLAN: 5, Uplink: "eth7"}, "")
	if !api.IsCode(err, api.CodeConflict) {
		t.Fatalf("want conflict, got %v", err)
	}
	if after := rowCounts(t, s); after["Bridge"] != before["Bridge"] || after["Port"] != before["Port"] {
		t.Fatalf("rows changed on a refused uplink: %v -> %v", before, after)
	}
}

// TestEmbeddedUplinkOwnPort: another network's own bridge, tunnel, DHCP
// or patch port, a VM's tap and the datapath are no uplink: the name alone
// refuses them (400 with the reason), before any row changes, and the
// other network keeps its ports.
func TestEmbeddedUplinkOwnPort(t *testing.T) {
	s := openEmbedded(t)
	ctx := tctx(t)
	if _, err := s.EnsureNetwork(ctx, "other", api.NetworkSpec{VLAN: 3}, ""); err != nil {
		t.Fatal(err)
	}
	before := rowCounts(t, s)
	bs, us := api.UplinkPatchNames("other")
	for _, name := range []string{api.BridgeName("other"), api.UplinkBridgeName("eth1"), bs, us,
		api.TunnelPortName("other", "h2"), api.DHCPPortName("other"), "vnet3", "ovs-system", "lo"} {
		_, err := s.EnsureNetwork(ctx, "up", api.NetworkSpec{VLAN: 5, Uplink: name}, "")
		if !api.IsCode(err, api.CodeInvalid) || !strings.Contains(err.Error(), name) {
			t.Errorf("uplink %s: want 400 naming it, got %v", name, err)
		}
	}
	if after := rowCounts(t, s); !maps.Equal(after, before) {
		t.Fatalf("rows changed on refused uplinks: %v -> %v", before, after)
	}
	if p := s.getPort(ctx, api.BridgeName("other")); p == nil {
		t.Fatal("the other network lost its port")
	}
}
