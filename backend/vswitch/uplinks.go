package vswitch

import (
	"context"
	"maps"
	"slices"

	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Uplinks. A host interface can be a port of only one OVS bridge, but
// several networks (one per VLAN) may want to reach the same physical
// switch through it. So the interface goes on an uplink bridge of its own,
// "kvu-<iface>", as a trunk, and every network using it is joined to that
// bridge by a patch-port pair whose uplink end passes only the network's
// VLAN (untagged frames only for a network without vlan). The uplink
// bridge, and with it the interface, is released when its last network
// lets go of it.

// getPort reads a port by name from the cache; nil when absent.
func (s *OVS) getPort(ctx context.Context, name string) *Port {
	p := &Port{Name: name}
	if err := s.client.Get(ctx, p); err != nil {
		return nil
	}
	return p
}

// uplinkComplete reports whether the uplink path of a network is whole on
// the uplink side: the patch peer and the interface are ports of iface's
// uplink bridge.
func (s *OVS) uplinkComplete(ctx context.Context, iface, peer string) bool {
	if iface == "" || peer == "" {
		return false
	}
	st, err := s.loadBridge(ctx, api.UplinkBridgeName(iface))
	if err != nil || st == nil || !owned(st.br.ExternalIDs) {
		return false
	}
	pp, phys := st.port(peer), st.port(iface)
	return pp != nil && pp.iface() != nil && pp.iface().Type == "patch" && phys != nil && phys.iface() != nil
}

// convergeUplink queues what makes network's uplink side match iface
// ("" for none): its patch port on the right uplink bridge with the right
// VLAN filter, the uplink bridge and its interface, and the release of a
// previous uplink bridge that no network uses any more.
func (s *OVS) convergeUplink(ctx context.Context, t *txn, network, iface string, vlan int64) {
	bridgeSide, uplinkSide := api.UplinkPatchNames(network)
	ext := map[string]string{keyOwned: "true", keyNetwork: network, keyRole: roleUplinkPatch, keyUplink: iface}
	wantPort := Port{Name: uplinkSide, Trunks: uplinkTrunks(vlan), ExternalIDs: ext}
	wantIface := Interface{Name: uplinkSide, Type: "patch", Options: map[string]string{"peer": bridgeSide}, ExternalIDs: ext}

	cur := s.getPort(ctx, uplinkSide)
	var curBr *Bridge
	if cur != nil {
		byPort, err := s.portBridges(ctx)
		if err != nil {
			t.add(nil, err)
			return
		}
		curBr = byPort[cur.UUID]
	}
	ubName := ""
	if iface != "" {
		ubName = api.UplinkBridgeName(iface)
	}
	if cur != nil && (curBr == nil || curBr.Name != ubName) {
		// The network left this uplink (or the row is orphaned).
		s.releaseUplinkPort(ctx, t, cur, curBr)
		cur = nil
	}
	if iface == "" {
		return
	}
	physExt := map[string]string{keyOwned: "true", keyRole: roleUplink, keyUplink: iface}
	ub, err := s.loadBridge(ctx, ubName)
	if err != nil {
		t.add(nil, err)
		return
	}
	if ub == nil {
		ports := []string{
			t.insertPort(ctx, Port{Name: iface, ExternalIDs: physExt}, Interface{Name: iface, ExternalIDs: physExt}),
			t.insertPort(ctx, wantPort, wantIface),
		}
		br := &Bridge{UUID: t.name("uplink"), Name: ubName, DatapathType: s.bridgeDatapath(), Ports: ports,
			ExternalIDs: map[string]string{keyOwned: "true", keyUplink: iface}}
		t.add(s.client.Create(br))
		root, err := s.root(ctx)
		if err != nil {
			t.add(nil, err)
			return
		}
		t.add(s.client.Where(root).Mutate(root, model.Mutation{Field: &root.Bridges, Mutator: ovsdb.MutateOperationInsert, Value: []string{br.UUID}}))
		s.log.Info("uplink bridge created", "bridge", ubName, "interface", iface, "network", network)
		return
	}
	if !owned(ub.br.ExternalIDs) || ub.br.ExternalIDs[keyUplink] != iface {
		t.add(nil, api.Errorf(api.CodeConflict, "bridge %s exists and is not kvm-hostd's uplink bridge for %s", ubName, iface))
		return
	}
	var add []string
	if p := ub.port(iface); p == nil || p.iface() == nil {
		if p != nil {
			t.deletePort(p)
			t.bridgePorts(&ub.br, nil, []string{p.port.UUID})
		}
		add = append(add, t.insertPort(ctx, Port{Name: iface, ExternalIDs: physExt}, Interface{Name: iface, ExternalIDs: physExt}))
	}
	if p := ub.port(uplinkSide); cur == nil || p == nil || p.iface() == nil {
		if p != nil {
			t.deletePort(p)
			t.bridgePorts(&ub.br, nil, []string{p.port.UUID})
		}
		add = append(add, t.insertPort(ctx, wantPort, wantIface))
	} else {
		i := p.iface()
		if !slices.Equal(p.port.Trunks, wantPort.Trunks) || p.port.Tag != nil || !maps.Equal(p.port.ExternalIDs, ext) {
			u := &Port{UUID: p.port.UUID, Trunks: wantPort.Trunks, ExternalIDs: ext}
			t.add(s.client.Where(u).Update(u, &u.Tag, &u.Trunks, &u.ExternalIDs))
		}
		if i.Type != "patch" || !maps.Equal(i.Options, wantIface.Options) || !maps.Equal(i.ExternalIDs, ext) {
			u := &Interface{UUID: i.UUID, Type: "patch", Options: wantIface.Options, ExternalIDs: ext}
			t.add(s.client.Where(u).Update(u, &u.Type, &u.Options, &u.ExternalIDs))
		}
	}
	t.bridgePorts(&ub.br, add, nil)
}

// releaseUplinkPort queues the removal of a network's patch port from its
// uplink bridge, and of the uplink bridge itself when no other network's
// patch port is left on it (which releases the host interface).
func (s *OVS) releaseUplinkPort(ctx context.Context, t *txn, p *Port, br *Bridge) {
	if !owned(p.ExternalIDs) {
		t.add(nil, api.Errorf(api.CodeConflict, "port %s exists and is not managed by kvm-hostd", p.Name))
		return
	}
	t.deletePort(&portState{port: *p})
	if br == nil {
		return
	}
	st := s.bridgeState(ctx, *br)
	othersUse := false
	for _, q := range st.ports {
		if q.port.UUID != p.UUID && (q.port.ExternalIDs[keyRole] == roleUplinkPatch || !owned(q.port.ExternalIDs)) {
			othersUse = true
		}
	}
	if othersUse || !owned(br.ExternalIDs) {
		t.bridgePorts(br, nil, []string{p.UUID})
		return
	}
	for _, q := range st.ports {
		if q.port.UUID != p.UUID {
			t.deletePort(q)
		}
	}
	t.deleteBridge(ctx, br)
	s.log.Info("uplink bridge released", "bridge", br.Name, "interface", br.ExternalIDs[keyUplink])
}

// deleteBridge queues deletion of a bridge row and its reference from the
// root row; the caller deletes the ports.
func (t *txn) deleteBridge(ctx context.Context, br *Bridge) {
	root, err := t.s.root(ctx)
	if err != nil {
		t.add(nil, err)
		return
	}
	t.add(t.s.client.Where(root).Mutate(root, model.Mutation{
		Field: &root.Bridges, Mutator: ovsdb.MutateOperationDelete, Value: []string{br.UUID},
	}))
	t.add(t.s.client.Where(&Bridge{UUID: br.UUID}).Delete())
}
