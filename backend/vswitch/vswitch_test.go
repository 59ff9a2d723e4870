package vswitch

import (
	"context"
	"log/slog"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("KVM_TEST_VERBOSE") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func openEmbedded(t *testing.T) *OVS {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := Open(ctx, EndpointEmbedded, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Close()
		s.Close() // idempotent
	})
	return s
}

func tctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// rowCounts is the number of rows per table, to prove idempotence.
func rowCounts(t *testing.T, s *OVS) map[string]int {
	t.Helper()
	c := map[string]int{}
	for _, tbl := range []string{"Bridge", "Port", "Interface"} {
		c[tbl] = len(s.client.Cache().Table(tbl).Rows())
	}
	return c
}

// ownedRows counts rows carrying our marker.
func ownedRows(t *testing.T, s *OVS) int {
	t.Helper()
	ctx := tctx(t)
	var brs []Bridge
	var ps []Port
	var is []Interface
	if err := s.client.WhereCache(func(b *Bridge) bool { return owned(b.ExternalIDs) }).List(ctx, &brs); err != nil {
		t.Fatal(err)
	}
	if err := s.client.WhereCache(func(p *Port) bool { return owned(p.ExternalIDs) }).List(ctx, &ps); err != nil {
		t.Fatal(err)
	}
	if err := s.client.WhereCache(func(i *Interface) bool { return owned(i.ExternalIDs) }).List(ctx, &is); err != nil {
		t.Fatal(err)
	}
	return len(brs) + len(ps) + len(is)
}

func iface(t *testing.T, s *OVS, name string) *Interface {
	t.Helper()
	i := &Interface{Name: name}
	if err := s.client.Get(tctx(t), i); err != nil {
		t.Fatalf("interface %s: %v", name, err)
	}
	return i
}

func port(t *testing.T, s *OVS, name string) *Port {
	t.Helper()
	p := &Port{Name: name}
	if err := s.client.Get(tctx(t), p); err != nil {
		t.Fatalf("port %s: %v", name, err)
	}
	return p
}

func TestEmbeddedVLANNetwork(t *testing.T) {
	s := openEmbedded(t)
	ctx := tctx(t)
	if err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	n, err := s.EnsureNetwork(ctx, "lan", api.NetworkSpec{VLAN: 42, MTU: 1400}, "")
	if err != nil {
		t.Fatal(err)
	}
	if n.Bridge != "kvm-lan" || n.VLAN != 42 || n.MTU != 1400 || n.DatapathType != DatapathNetdev || n.Overlay != "" || len(n.Tunnels) != 0 {
		t.Fatalf("unexpected network %+v", n)
	}
	if mtu := iface(t, s, "kvm-lan").MTURequest; mtu == nil || *mtu != 1400 {
		t.Fatalf("mtu_request = %v", mtu)
	}
	got, err := s.GetNetwork(ctx, "lan")
	if err != nil || got.VLAN != 42 {
		t.Fatalf("get: %+v %v", got, err)
	}
	if _, err := s.GetNetwork(ctx, "nope"); !api.IsNotFound(err) {
		t.Fatalf("want not found, got %v", err)
	}
	// Dropping the MTU clears mtu_request.
	if n, err = s.EnsureNetwork(ctx, "lan", api.NetworkSpec{VLAN: 42}, ""); err != nil || n.MTU != 0 {
		t.Fatalf("%+v %v", n, err)
	}
	if mtu := iface(t, s, "kvm-lan").MTURequest; mtu != nil {
		t.Fatalf("mtu_request still %d", *mtu)
	}
	list, err := s.ListNetworks(ctx)
	if err != nil || len(list) != 1 || list[0].Name != "lan" {
		t.Fatalf("list: %+v %v", list, err)
	}
}

func overlaySpec(peers ...api.NetworkPeer) api.NetworkSpec {
	return api.NetworkSpec{Overlay: api.OverlayVXLAN, VNI: 5001, MTU: 1450, Peers: peers}
}

var (
	peerB = api.NetworkPeer{Host: "host-b", TunnelIP: "10.0.0.12"}
	peerC = api.NetworkPeer{Host: "host-c", TunnelIP: "10.0.0.13"}
)

func TestEmbeddedOverlayConverges(t *testing.T) {
	s := openEmbedded(t)
	ctx := tctx(t)
	n, err := s.EnsureNetwork(ctx, "ov", overlaySpec(peerB, peerC), "10.0.0.11")
	if err != nil {
		t.Fatal(err)
	}
	if n.Overlay != "vxlan" || n.VNI != 5001 || len(n.Tunnels) != 2 {
		t.Fatalf("unexpected network %+v", n)
	}
	tb := api.TunnelPortName("ov", "host-b")
	if n.Tunnels[0] != (api.NetworkTunnel{Port: tb, Peer: "host-b", RemoteIP: "10.0.0.12"}) {
		t.Fatalf("tunnel %+v", n.Tunnels[0])
	}
	i := iface(t, s, tb)
	if i.Type != "vxlan" || i.Options["remote_ip"] != "10.0.0.12" || i.Options["key"] != "5001" || i.Options["local_ip"] != "10.0.0.11" {
		t.Fatalf("tunnel interface %+v", i)
	}
	if !owned(i.ExternalIDs) || i.ExternalIDs[keyNetwork] != "ov" {
		t.Fatalf("tunnel external_ids %v", i.ExternalIDs)
	}

	// Idempotent: same input, no rows added, no transaction at all.
	before, txns := rowCounts(t, s), s.txns.Load()
	n2, err := s.EnsureNetwork(ctx, "ov", overlaySpec(peerB, peerC), "10.0.0.11")
	if err != nil {
		t.Fatal(err)
	}
	if after := rowCounts(t, s); !mapsEqual(before, after) {
		t.Fatalf("row counts changed: %v -> %v", before, after)
	}
	if s.txns.Load() != txns {
		t.Fatal("repeated EnsureNetwork sent a transaction")
	}
	if len(n2.Tunnels) != 2 {
		t.Fatalf("%+v", n2)
	}

	// Removing a peer removes exactly its tunnel.
	tc := api.TunnelPortName("ov", "host-c")
	cUUID := port(t, s, tb).UUID
	n3, err := s.EnsureNetwork(ctx, "ov", overlaySpec(peerB), "10.0.0.11")
	if err != nil {
		t.Fatal(err)
	}
	if len(n3.Tunnels) != 1 || n3.Tunnels[0].Peer != "host-b" {
		t.Fatalf("%+v", n3.Tunnels)
	}
	if port(t, s, tb).UUID != cUUID {
		t.Fatal("the remaining tunnel was recreated")
	}
	if err := s.client.Get(ctx, &Port{Name: tc}); err == nil {
		t.Fatal("port of removed peer still exists")
	}
	if err := s.client.Get(ctx, &Interface{Name: tc}); err == nil {
		t.Fatal("interface of removed peer still exists")
	}

	// A changed peer address is updated in place.
	moved := api.NetworkPeer{Host: "host-b", TunnelIP: "10.0.0.22"}
	n4, err := s.EnsureNetwork(ctx, "ov", overlaySpec(moved), "10.0.0.11")
	if err != nil {
		t.Fatal(err)
	}
	if n4.Tunnels[0].RemoteIP != "10.0.0.22" || port(t, s, tb).UUID != cUUID {
		t.Fatalf("%+v", n4.Tunnels)
	}

	// Switching to geneve changes the interface type.
	g := overlaySpec(moved)
	g.Overlay = api.OverlayGeneve
	if _, err := s.EnsureNetwork(ctx, "ov", g, "10.0.0.11"); err != nil {
		t.Fatal(err)
	}
	if ty := iface(t, s, tb).Type; ty != "geneve" {
		t.Fatalf("type %s", ty)
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// deletePortOutOfBand does what ovs-vsctl del-port does (plus the garbage
// collection the in-memory server lacks), through a raw transaction.
func deletePortOutOfBand(t *testing.T, s *OVS, bridge, name string) {
	t.Helper()
	ctx := tctx(t)
	br := &Bridge{Name: bridge}
	if err := s.client.Get(ctx, br); err != nil {
		t.Fatal(err)
	}
	p := port(t, s, name)
	var ops []ovsdb.Operation
	o, err := s.client.Where(br).Mutate(br, model.Mutation{Field: &br.Ports, Mutator: ovsdb.MutateOperationDelete, Value: []string{p.UUID}})
	if err != nil {
		t.Fatal(err)
	}
	ops = append(ops, o...)
	if s.embedded != nil {
		o, _ = s.client.Where(p).Delete()
		ops = append(ops, o...)
		o, _ = s.client.Where(&Interface{UUID: p.Interfaces[0]}).Delete()
		ops = append(ops, o...)
	}
	if _, err := s.transact(ctx, ops); err != nil {
		t.Fatal(err)
	}
}

func TestEmbeddedDriftRepair(t *testing.T) {
	s := openEmbedded(t)
	ctx := tctx(t)
	spec := overlaySpec(peerB, peerC)
	if _, err := s.EnsureNetwork(ctx, "dr", spec, "10.0.0.11"); err != nil {
		t.Fatal(err)
	}
	tc := api.TunnelPortName("dr", "host-c")
	deletePortOutOfBand(t, s, "kvm-dr", tc)
	n, err := s.GetNetwork(ctx, "dr")
	if err != nil {
		t.Fatal(err)
	}
	if len(n.Tunnels) != 1 || n.Tunnels[0].Peer != "host-b" {
		t.Fatalf("drift not reported: %+v", n.Tunnels)
	}
	n, err = s.EnsureNetwork(ctx, "dr", spec, "10.0.0.11")
	if err != nil {
		t.Fatal(err)
	}
	if len(n.Tunnels) != 2 || n.Tunnels[1].Port != tc {
		t.Fatalf("not repaired: %+v", n.Tunnels)
	}
	// An out-of-band option change is reported and repaired too.
	i := iface(t, s, tc)
	u := &Interface{UUID: i.UUID, Options: map[string]string{"remote_ip": "192.0.2.1", "key": "5001"}}
	ops, _ := s.client.Where(u).Update(u, &u.Options)
	if _, err := s.transact(ctx, ops); err != nil {
		t.Fatal(err)
	}
	if n, _ = s.GetNetwork(ctx, "dr"); n.Tunnels[1].RemoteIP != "192.0.2.1" {
		t.Fatalf("%+v", n.Tunnels)
	}
	if n, _ = s.EnsureNetwork(ctx, "dr", spec, "10.0.0.11"); n.Tunnels[1].RemoteIP != "10.0.0.13" {
		t.Fatalf("%+v", n.Tunnels)
	}
	// The internal port deleted out of band is recreated.
	deletePortOutOfBand(t, s, "kvm-dr", "kvm-dr")
	if _, err := s.EnsureNetwork(ctx, "dr", spec, "10.0.0.11"); err != nil {
		t.Fatal(err)
	}
	if i := iface(t, s, "kvm-dr"); i.Type != "internal" || i.MTURequest == nil || *i.MTURequest != 1450 {
		t.Fatalf("%+v", i)
	}
}

func TestEmbeddedVMPorts(t *testing.T) {
	s := openEmbedded(t)
	ctx := tctx(t)
	if _, err := s.EnsureNetwork(ctx, "lan", api.NetworkSpec{VLAN: 42}, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.EnsureNetwork(ctx, "ov", overlaySpec(peerB), "10.0.0.11"); err != nil {
		t.Fatal(err)
	}
	ifaces := []api.VMInterface{
		{Network: "lan", MAC: "52:54:00:00:00:01", VLAN: 42},
		{Network: "ov", MAC: "52:54:00:00:00:02"},
	}
	if err := s.AttachVMPorts(ctx, "web-1", ifaces); err != nil {
		t.Fatal(err)
	}
	p0 := port(t, s, vmPortName("web-1", 0))
	if p0.Tag == nil || *p0.Tag != 42 || p0.ExternalIDs[keyMAC] != "52:54:00:00:00:01" || p0.ExternalIDs[keyVM] != "web-1" {
		t.Fatalf("port %+v", p0)
	}
	if i := iface(t, s, p0.Name); i.ExternalIDs[keyMAC] != "52:54:00:00:00:01" {
		t.Fatalf("iface %+v", i)
	}
	if p1 := port(t, s, vmPortName("web-1", 1)); p1.Tag != nil {
		t.Fatalf("untagged port got tag %d", *p1.Tag)
	}
	n, _ := s.GetNetwork(ctx, "lan")
	if !slices.Equal(n.Ports, []string{p0.Name}) {
		t.Fatalf("ports %v", n.Ports)
	}
	before, txns := rowCounts(t, s), s.txns.Load()
	if err := s.AttachVMPorts(ctx, "web-1", ifaces); err != nil {
		t.Fatal(err)
	}
	if after := rowCounts(t, s); !mapsEqual(before, after) {
		t.Fatalf("row counts changed: %v -> %v", before, after)
	}
	if s.txns.Load() != txns {
		t.Fatal("repeated AttachVMPorts sent a transaction")
	}
	// Changing the network's access VLAN re-tags our VM ports.
	if _, err := s.EnsureNetwork(ctx, "lan", api.NetworkSpec{VLAN: 43}, ""); err != nil {
		t.Fatal(err)
	}
	if tag := port(t, s, p0.Name).Tag; tag == nil || *tag != 43 {
		t.Fatalf("tag after vlan change: %v", tag)
	}
	// Fewer interfaces: the port of the dropped one goes, the other stays.
	if err := s.AttachVMPorts(ctx, "web-1", ifaces[:1]); err != nil {
		t.Fatal(err)
	}
	if err := s.client.Get(ctx, &Port{Name: vmPortName("web-1", 1)}); err == nil {
		t.Fatal("port of removed interface left")
	}
	if port(t, s, p0.Name).UUID != p0.UUID {
		t.Fatal("kept port was recreated")
	}
	if err := s.DetachVMPorts(ctx, "web-1"); err != nil {
		t.Fatal(err)
	}
	if n, _ := s.GetNetwork(ctx, "lan"); len(n.Ports) != 0 {
		t.Fatalf("ports left %v", n.Ports)
	}
	if err := s.client.Get(ctx, &Port{Name: p0.Name}); err == nil {
		t.Fatal("port row left")
	}
	if err := s.AttachVMPorts(ctx, "x", []api.VMInterface{{Network: "missing"}}); !api.IsNotFound(err) {
		t.Fatalf("want not found, got %v", err)
	}
}

func TestEmbeddedDeleteLeavesNothing(t *testing.T) {
	s := openEmbedded(t)
	ctx := tctx(t)
	if _, err := s.EnsureNetwork(ctx, "ov", overlaySpec(peerB, peerC), "10.0.0.11"); err != nil {
		t.Fatal(err)
	}
	if err := s.AttachVMPorts(ctx, "db-1", []api.VMInterface{{Network: "ov", MAC: "52:54:00:00:00:03"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteNetwork(ctx, "ov"); err != nil {
		t.Fatal(err)
	}
	if n := ownedRows(t, s); n != 0 {
		t.Fatalf("%d owned rows left", n)
	}
	root, _ := s.root(ctx)
	if len(root.Bridges) != 0 {
		t.Fatalf("root still references %v", root.Bridges)
	}
	if err := s.DeleteNetwork(ctx, "ov"); !api.IsNotFound(err) {
		t.Fatalf("want not found, got %v", err)
	}
}

func TestEmbeddedForeignBridgeConflict(t *testing.T) {
	s := openEmbedded(t)
	ctx := tctx(t)
	// Someone else's bridge, named like ours, without our marker.
	br := &Bridge{UUID: "br", Name: api.BridgeName("taken")}
	ops, err := s.client.Create(br)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := s.root(ctx)
	m, _ := s.client.Where(root).Mutate(root, model.Mutation{Field: &root.Bridges, Mutator: ovsdb.MutateOperationInsert, Value: []string{"br"}})
	if _, err := s.transact(ctx, append(ops, m...)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.EnsureNetwork(ctx, "taken", api.NetworkSpec{}, ""); !api.IsCode(err, api.CodeConflict) {
		t.Fatalf("want conflict, got %v", err)
	}
	if _, err := s.GetNetwork(ctx, "taken"); !api.IsNotFound(err) {
		t.Fatalf("want not found, got %v", err)
	}
	if err := s.DeleteNetwork(ctx, "taken"); !api.IsNotFound(err) {
		t.Fatalf("want not found, got %v", err)
	}
	if err := s.client.Get(ctx, &Bridge{Name: api.BridgeName("taken")}); err != nil {
		t.Fatal("foreign bridge touched")
	}
	if list, _ := s.ListNetworks(ctx); len(list) != 0 {
		t.Fatalf("foreign bridge listed: %+v", list)
	}
}

func TestInvalidSpecs(t *testing.T) {
	s := openEmbedded(t)
	ctx := tctx(t)
	for _, spec := range []api.NetworkSpec{
		{VLAN: 5000},
		{Overlay: "gre", VNI: 1},
		{Overlay: "vxlan"},
		{VNI: 7},
		{Overlay: "vxlan", VNI: 1, Peers: []api.NetworkPeer{{Host: "b", TunnelIP: "not-an-ip"}}},
	} {
		if _, err := s.EnsureNetwork(ctx, "bad", spec, ""); !api.IsCode(err, api.CodeInvalid) {
			t.Errorf("%+v: want invalid, got %v", spec, err)
		}
	}
	if _, err := Open(ctx, "ssl:1.2.3.4:6640", nil); !api.IsCode(err, api.CodeInvalid) {
		t.Errorf("want invalid endpoint, got %v", err)
	}
}
