package vswitch

import (
	"context"
	"errors"
	"maps"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/ovn-kubernetes/libovsdb/client"
	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// portState is a port of a bridge with its interfaces, from the cache.
type portState struct {
	port   Port
	ifaces []Interface
}

// iface is the port's first interface (ours always have exactly one).
func (p *portState) iface() *Interface {
	if len(p.ifaces) == 0 {
		return nil
	}
	return &p.ifaces[0]
}

// bridgeState is a bridge and its ports as the cache has them.
type bridgeState struct {
	br    Bridge
	ports []*portState
}

// loadBridge reads a bridge by name from the cache; nil when absent.
func (s *OVS) loadBridge(ctx context.Context, name string) (*bridgeState, error) {
	if err := s.connected(); err != nil {
		return nil, err
	}
	br := &Bridge{Name: name}
	if err := s.client.Get(ctx, br); err != nil {
		if errors.Is(err, client.ErrNotFound) {
			return nil, nil
		}
		return nil, err
	}
	return s.bridgeState(ctx, *br), nil
}

func (s *OVS) bridgeState(ctx context.Context, br Bridge) *bridgeState {
	st := &bridgeState{br: br}
	for _, pu := range br.Ports {
		p := &Port{UUID: pu}
		if err := s.client.Get(ctx, p); err != nil {
			continue // dangling in a stale cache; the next update fixes it
		}
		ps := &portState{port: *p}
		for _, iu := range p.Interfaces {
			i := &Interface{UUID: iu}
			if err := s.client.Get(ctx, i); err == nil {
				ps.ifaces = append(ps.ifaces, *i)
			}
		}
		st.ports = append(st.ports, ps)
	}
	sort.Slice(st.ports, func(a, b int) bool { return st.ports[a].port.Name < st.ports[b].port.Name })
	return st
}

func (st *bridgeState) port(name string) *portState {
	for _, p := range st.ports {
		if p.port.Name == name {
			return p
		}
	}
	return nil
}

func isTunnelType(t string) bool { return t == api.OverlayVXLAN || t == api.OverlayGeneve }

// validateNetworkSpec applies the rules kvm-hostd checks on every request
// (api.ValidateNetworkSpec) and checks this host's tunnel IP.
func validateNetworkSpec(name string, spec api.NetworkSpec, localIP string) error {
	if err := api.ValidateNetworkSpec(name, spec); err != nil {
		return err
	}
	if localIP != "" && net.ParseIP(localIP) == nil {
		return api.Errorf(api.CodeInvalid, "local tunnel ip %q is not an IP address", localIP)
	}
	return nil
}

// bridgeExternalIDs records the spec on the bridge, so GetNetwork can
// return it after a restart (OVSDB is kvm-hostd's only state).
func bridgeExternalIDs(name string, spec api.NetworkSpec) map[string]string {
	ext := map[string]string{keyOwned: "true", keyNetwork: name}
	if spec.VLAN > 0 {
		ext[keyVLAN] = strconv.FormatInt(spec.VLAN, 10)
	}
	if spec.Overlay != "" {
		ext[keyOverlay] = spec.Overlay
		ext[keyVNI] = strconv.FormatInt(spec.VNI, 10)
	}
	if spec.MTU > 0 {
		ext[keyMTU] = strconv.FormatInt(spec.MTU, 10)
	}
	if sn := spec.Subnet; sn != nil {
		ext[keySubnet] = sn.CIDR
		if sn.Gateway != "" {
			ext[keyGateway] = sn.Gateway
		}
		if len(sn.DNSServers) > 0 {
			ext[keyDNS] = strings.Join(sn.DNSServers, ",")
		}
	}
	if spec.DHCP {
		ext[keyDHCPIP] = spec.DHCPServerIP
	}
	if spec.Uplink != "" {
		ext[keyUplink] = spec.Uplink
	}
	ext[keyPortSecurity] = strconv.FormatBool(spec.PortSecurityEnabled())
	return ext
}

// roleWant is a port a network's bridge needs besides its own internal
// port, VM ports and tunnels: the DHCP server's port and the patch port
// towards the uplink bridge.
type roleWant struct {
	port  Port
	iface Interface
}

// uplinkTrunks is what a patch port between a network bridge and its uplink
// bridge carries: only the network's VLAN, or for a network without vlan
// only untagged frames (OVS puts those in VLAN 0, and a trunk port whose
// trunks are [0] carries VLAN 0 alone; an empty trunks would carry all).
func uplinkTrunks(vlan int64) []int { return []int{int(vlan)} }

func desiredRolePorts(name string, spec api.NetworkSpec) map[string]roleWant {
	want := map[string]roleWant{}
	if spec.DHCP {
		pn := api.DHCPPortName(name)
		ext := map[string]string{keyOwned: "true", keyNetwork: name, keyRole: roleDHCP}
		// Tagged like a VM port, so the server sees exactly the VMs' VLAN.
		// The port never gets an IP address: the host stays unreachable
		// from VM networks; the server speaks through a raw socket.
		want[pn] = roleWant{
			port:  Port{Name: pn, Tag: intPtr(spec.VLAN), ExternalIDs: ext},
			iface: Interface{Name: pn, Type: "internal", ExternalIDs: ext},
		}
	}
	if spec.Uplink != "" {
		pn, peer := api.UplinkPatchNames(name)
		ext := map[string]string{keyOwned: "true", keyNetwork: name, keyRole: roleUplinkPatch, keyUplink: spec.Uplink}
		want[pn] = roleWant{
			port:  Port{Name: pn, Trunks: uplinkTrunks(spec.VLAN), ExternalIDs: ext},
			iface: Interface{Name: pn, Type: "patch", Options: map[string]string{"peer": peer}, ExternalIDs: ext},
		}
	}
	return want
}

// tunnelWant is the desired tunnel interface towards one peer.
type tunnelWant struct {
	port, typ string
	options   map[string]string
	ext       map[string]string
}

func desiredTunnels(name string, spec api.NetworkSpec, localIP string) map[string]tunnelWant {
	want := map[string]tunnelWant{}
	if spec.Overlay == "" {
		return want
	}
	for _, p := range spec.Peers {
		opts := map[string]string{"remote_ip": p.TunnelIP, "key": strconv.FormatInt(spec.VNI, 10)}
		if localIP != "" {
			opts["local_ip"] = localIP
		}
		pn := api.TunnelPortName(name, p.Host)
		want[pn] = tunnelWant{
			port:    pn,
			typ:     spec.Overlay,
			options: opts,
			ext:     map[string]string{keyOwned: "true", keyNetwork: name, keyPeer: p.Host},
		}
	}
	return want
}

// EnsureNetwork creates or converges the bridge of network name in a single
// transaction computed from the cache; when nothing differs no transaction
// is sent at all, so repeating a call changes nothing.
func (s *OVS) EnsureNetwork(ctx context.Context, name string, spec api.NetworkSpec, localIP string) (*api.Network, error) {
	if err := validateNetworkSpec(name, spec, localIP); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()

	brName := api.BridgeName(name)
	st, err := s.loadBridge(ctx, brName)
	if err != nil {
		return nil, err
	}
	t := &txn{s: s}
	ext := bridgeExternalIDs(name, spec)
	tunnels := desiredTunnels(name, spec, localIP)
	created := st == nil
	if created {
		s.createBridge(ctx, t, brName, name, ext, spec, tunnels)
		s.convergeUplink(ctx, t, name, spec.Uplink, spec.VLAN)
	} else {
		if !owned(st.br.ExternalIDs) {
			return nil, api.Errorf(api.CodeConflict, "bridge %s exists and is not managed by kvm-hostd", brName)
		}
		if n := st.br.ExternalIDs[keyNetwork]; n != name {
			return nil, api.Errorf(api.CodeConflict, "bridge %s belongs to network %q", brName, n)
		}
		s.convergeBridge(ctx, t, st, name, ext, spec, tunnels)
		s.convergeUplink(ctx, t, name, spec.Uplink, spec.VLAN)
	}
	if _, err := t.commit(ctx); err != nil {
		return nil, err
	}
	if len(t.ops) > 0 {
		s.log.Info("network converged", "network", name, "bridge", brName, "created", created, "ops", len(t.ops))
	}
	if created {
		if err := s.verifyDatapath(ctx, brName); err != nil {
			return nil, err
		}
	}
	return s.getNetwork(ctx, name)
}

// createBridge queues what ovs-vsctl add-br does (bridge, internal port and
// interface, reference from the root row) plus the tunnels.
func (s *OVS) createBridge(ctx context.Context, t *txn, brName, name string, ext map[string]string, spec api.NetworkSpec, tunnels map[string]tunnelWant) {
	portExt := map[string]string{keyOwned: "true", keyNetwork: name}
	ports := []string{t.insertPort(ctx,
		Port{Name: brName, ExternalIDs: portExt},
		Interface{Name: brName, Type: "internal", MTURequest: intPtr(spec.MTU), ExternalIDs: portExt},
	)}
	for _, pn := range slices.Sorted(maps.Keys(tunnels)) {
		w := tunnels[pn]
		ports = append(ports, t.insertPort(ctx,
			Port{Name: pn, ExternalIDs: w.ext},
			Interface{Name: pn, Type: w.typ, Options: w.options, ExternalIDs: w.ext},
		))
	}
	roles := desiredRolePorts(name, spec)
	for _, pn := range slices.Sorted(maps.Keys(roles)) {
		ports = append(ports, t.insertPort(ctx, roles[pn].port, roles[pn].iface))
	}
	dp := s.bridgeDatapath()
	br := &Bridge{UUID: t.name("bridge"), Name: brName, DatapathType: dp, Ports: ports, ExternalIDs: ext}
	t.add(s.client.Create(br))
	root, err := s.root(ctx)
	if err != nil {
		t.add(nil, err)
		return
	}
	muts := []model.Mutation{{Field: &root.Bridges, Mutator: ovsdb.MutateOperationInsert, Value: []string{br.UUID}}}
	if s.verifyDP() {
		// Ask vswitchd to confirm it applied this change (see verifyDatapath).
		muts = append(muts, model.Mutation{Field: &root.NextCfg, Mutator: ovsdb.MutateOperationAdd, Value: 1})
	}
	t.add(s.client.Where(root).Mutate(root, muts...))
}

// convergeBridge queues only what differs between an existing owned bridge
// and the spec: external_ids, internal port and MTU, tunnels, VM port tags.
func (s *OVS) convergeBridge(ctx context.Context, t *txn, st *bridgeState, name string, ext map[string]string, spec api.NetworkSpec, tunnels map[string]tunnelWant) {
	br := &st.br
	if !maps.Equal(br.ExternalIDs, ext) {
		b := &Bridge{UUID: br.UUID, ExternalIDs: ext}
		t.add(s.client.Where(b).Update(b, &b.ExternalIDs))
	}
	var add, del []string
	internal := st.port(br.Name)
	if internal == nil || internal.iface() == nil {
		// deleted out of band (or never completed): recreate
		if internal != nil {
			t.deletePort(internal)
			del = append(del, internal.port.UUID)
		}
		portExt := map[string]string{keyOwned: "true", keyNetwork: name}
		add = append(add, t.insertPort(ctx,
			Port{Name: br.Name, ExternalIDs: portExt},
			Interface{Name: br.Name, Type: "internal", MTURequest: intPtr(spec.MTU), ExternalIDs: portExt},
		))
	} else {
		i := internal.iface()
		// A system bridge vswitchd could not create means the kernel
		// datapath is missing (e.g. made before the module was unloaded).
		if s.autoDP && s.embedded == nil && br.DatapathType != DatapathNetdev && s.vswitchdCurrent(ctx) && datapathFailed(i) {
			s.useNetdev(br.Name, i)
			b := &Bridge{UUID: br.UUID, DatapathType: DatapathNetdev}
			t.add(s.client.Where(b).Update(b, &b.DatapathType))
		}
		// Only touch mtu_request when we manage the MTU (now or before).
		if want := intPtr(spec.MTU); !eqIntPtr(i.MTURequest, want) && (spec.MTU > 0 || br.ExternalIDs[keyMTU] != "") {
			u := &Interface{UUID: i.UUID, MTURequest: want}
			t.add(s.client.Where(u).Update(u, &u.MTURequest))
		}
	}

	roles := desiredRolePorts(name, spec)
	for _, p := range st.ports {
		i := p.iface()
		if !owned(p.port.ExternalIDs) || p.port.Name == br.Name {
			continue
		}
		if p.port.ExternalIDs[keyRole] != "" {
			w, ok := roles[p.port.Name]
			switch {
			case !ok || i == nil:
				t.deletePort(p)
				del = append(del, p.port.UUID)
			default:
				if !eqIntPtr(p.port.Tag, w.port.Tag) || !slices.Equal(p.port.Trunks, w.port.Trunks) || !maps.Equal(p.port.ExternalIDs, w.port.ExternalIDs) {
					u := &Port{UUID: p.port.UUID, Tag: w.port.Tag, Trunks: w.port.Trunks, ExternalIDs: w.port.ExternalIDs}
					t.add(s.client.Where(u).Update(u, &u.Tag, &u.Trunks, &u.ExternalIDs))
				}
				if i.Type != w.iface.Type || !maps.Equal(i.Options, w.iface.Options) || !maps.Equal(i.ExternalIDs, w.iface.ExternalIDs) {
					u := &Interface{UUID: i.UUID, Type: w.iface.Type, Options: w.iface.Options, ExternalIDs: w.iface.ExternalIDs}
					t.add(s.client.Where(u).Update(u, &u.Type, &u.Options, &u.ExternalIDs))
				}
			}
			continue
		}
		if i != nil && isTunnelType(i.Type) || p.port.ExternalIDs[keyPeer] != "" {
			w, ok := tunnels[p.port.Name]
			switch {
			case !ok || i == nil:
				// stale peer, or a broken row: delete (re-added below if wanted)
				t.deletePort(p)
				del = append(del, p.port.UUID)
			case i.Type != w.typ || !maps.Equal(i.Options, w.options) || !maps.Equal(i.ExternalIDs, w.ext):
				u := &Interface{UUID: i.UUID, Type: w.typ, Options: w.options, ExternalIDs: w.ext}
				t.add(s.client.Where(u).Update(u, &u.Type, &u.Options, &u.ExternalIDs))
			}
			if !maps.Equal(p.port.ExternalIDs, w.ext) && ok && i != nil {
				u := &Port{UUID: p.port.UUID, ExternalIDs: w.ext}
				t.add(s.client.Where(u).Update(u, &u.ExternalIDs))
			}
			continue
		}
		// Our VM ports follow the network's access VLAN.
		if p.port.ExternalIDs[keyVM] != "" && p.port.ExternalIDs[keyNetwork] == name {
			if want := intPtr(spec.VLAN); !eqIntPtr(p.port.Tag, want) {
				u := &Port{UUID: p.port.UUID, Tag: want}
				t.add(s.client.Where(u).Update(u, &u.Tag))
			}
		}
	}
	for _, pn := range slices.Sorted(maps.Keys(tunnels)) {
		if p := st.port(pn); p != nil && p.iface() != nil && !slices.Contains(del, p.port.UUID) {
			continue
		}
		w := tunnels[pn]
		add = append(add, t.insertPort(ctx,
			Port{Name: pn, ExternalIDs: w.ext},
			Interface{Name: pn, Type: w.typ, Options: w.options, ExternalIDs: w.ext},
		))
	}
	for _, pn := range slices.Sorted(maps.Keys(roles)) {
		if p := st.port(pn); p != nil && p.iface() != nil && !slices.Contains(del, p.port.UUID) {
			continue
		}
		add = append(add, t.insertPort(ctx, roles[pn].port, roles[pn].iface))
	}
	t.bridgePorts(br, add, del)
}

// GetNetwork reads a network back from the cache: spec from the bridge's
// external_ids, MTU from the internal interface, tunnels and VM ports.
func (s *OVS) GetNetwork(ctx context.Context, name string) (*api.Network, error) {
	return s.getNetwork(ctx, name)
}

func (s *OVS) getNetwork(ctx context.Context, name string) (*api.Network, error) {
	st, err := s.loadBridge(ctx, api.BridgeName(name))
	if err != nil {
		return nil, err
	}
	if st == nil || !owned(st.br.ExternalIDs) || st.br.ExternalIDs[keyNetwork] != name {
		return nil, errNotFound("network %q not found", name)
	}
	n := s.readNetwork(ctx, st)
	return &n, nil
}

func (s *OVS) readNetwork(ctx context.Context, st *bridgeState) api.Network {
	ext := st.br.ExternalIDs
	n := api.Network{
		Name:         ext[keyNetwork],
		Bridge:       st.br.Name,
		Overlay:      ext[keyOverlay],
		DatapathType: st.br.DatapathType,
		PortSecurity: portSecurityOn(ext),
	}
	if n.DatapathType == "" {
		n.DatapathType = DatapathSystem // OVS's meaning of an empty datapath_type
	}
	n.VLAN, _ = strconv.ParseInt(ext[keyVLAN], 10, 64)
	n.VNI, _ = strconv.ParseInt(ext[keyVNI], 10, 64)
	if ext[keySubnet] != "" {
		n.Subnet = &api.Subnet{CIDR: ext[keySubnet], Gateway: ext[keyGateway]}
		if ext[keyDNS] != "" {
			n.Subnet.DNSServers = strings.Split(ext[keyDNS], ",")
		}
	}
	for _, p := range st.ports {
		i := p.iface()
		switch {
		case p.port.ExternalIDs[keyRole] == roleDHCP:
			// DHCP is on when its port is there (a deleted port is drift).
			if ext[keyDHCPIP] != "" && i != nil && i.Type == "internal" {
				n.DHCP, n.DHCPServerIP = true, ext[keyDHCPIP]
			}
		case p.port.ExternalIDs[keyRole] == roleUplinkPatch:
			// The uplink is there when the whole path is: this patch port,
			// its peer on the uplink bridge and the interface itself.
			if i != nil && i.Type == "patch" && s.uplinkComplete(ctx, p.port.ExternalIDs[keyUplink], i.Options["peer"]) {
				n.Uplink = p.port.ExternalIDs[keyUplink]
			}
		case p.port.Name == st.br.Name:
			// The realized MTU, so an out-of-band change shows as drift.
			if ext[keyMTU] != "" && i != nil && i.MTURequest != nil {
				n.MTU = int64(*i.MTURequest)
			}
		case i != nil && isTunnelType(i.Type):
			n.Tunnels = append(n.Tunnels, api.NetworkTunnel{
				Port: p.port.Name, Peer: p.port.ExternalIDs[keyPeer], RemoteIP: i.Options["remote_ip"],
			})
		case p.port.ExternalIDs[keyVM] != "" || i != nil && i.Type != "internal":
			// ours (vm-id) or libvirt's vnetN tap ports
			n.Ports = append(n.Ports, p.port.Name)
		}
	}
	sort.Slice(n.Tunnels, func(a, b int) bool { return n.Tunnels[a].Peer < n.Tunnels[b].Peer })
	return n
}

// ListNetworks returns every network whose bridge kvm-hostd owns.
func (s *OVS) ListNetworks(ctx context.Context) ([]api.Network, error) {
	if err := s.connected(); err != nil {
		return nil, err
	}
	var brs []Bridge
	err := s.client.WhereCache(func(b *Bridge) bool {
		return owned(b.ExternalIDs) && b.ExternalIDs[keyNetwork] != ""
	}).List(ctx, &brs)
	if err != nil {
		return nil, err
	}
	out := make([]api.Network, 0, len(brs))
	for _, b := range brs {
		out = append(out, s.readNetwork(ctx, s.bridgeState(ctx, b)))
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Name < out[b].Name })
	return out, nil
}

// DeleteNetwork removes an owned bridge with its ports and interfaces.
// Ports that are not ours (a libvirt tap of a running VM) make it refuse:
// the service checks VM usage first, so that is a race or a leftover that
// an operator should see rather than have silently cut off.
func (s *OVS) DeleteNetwork(ctx context.Context, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.loadBridge(ctx, api.BridgeName(name))
	if err != nil {
		return err
	}
	if st == nil || !owned(st.br.ExternalIDs) || st.br.ExternalIDs[keyNetwork] != name {
		return errNotFound("network %q not found", name)
	}
	t := &txn{s: s}
	for _, p := range st.ports {
		if !owned(p.port.ExternalIDs) {
			return api.Errorf(api.CodeConflict, "network %q: bridge %s has port %s not managed by kvm-hostd", name, st.br.Name, p.port.Name)
		}
		t.deletePort(p)
	}
	s.convergeUplink(ctx, t, name, "", 0)
	t.deleteBridge(ctx, &st.br)
	if _, err := t.commit(ctx); err != nil {
		return err
	}
	s.log.Info("network deleted", "network", name, "bridge", st.br.Name)
	return nil
}
