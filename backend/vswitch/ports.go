package vswitch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"strconv"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// vmPortName is the port of a VM's index-th interface: stable, within
// IFNAMSIZ, and distinct from libvirt's vnetN and our kt- tunnels.
func vmPortName(vm string, index int) string {
	sum := sha256.Sum256([]byte(vm + "\x00" + strconv.Itoa(index)))
	return "vm-" + hex.EncodeToString(sum[:])[:12]
}

// portBridges maps every port uuid to the bridge referencing it.
func (s *OVS) portBridges(ctx context.Context) (map[string]*Bridge, error) {
	var brs []Bridge
	if err := s.client.List(ctx, &brs); err != nil {
		return nil, err
	}
	m := map[string]*Bridge{}
	for i := range brs {
		for _, pu := range brs[i].Ports {
			m[pu] = &brs[i]
		}
	}
	return m, nil
}

// vmPorts lists our ports recorded for vm.
func (s *OVS) vmPorts(ctx context.Context, vm string) ([]Port, error) {
	var ps []Port
	err := s.client.WhereCache(func(p *Port) bool {
		return owned(p.ExternalIDs) && p.ExternalIDs[keyVM] == vm
	}).List(ctx, &ps)
	return ps, err
}

// bridgeMuts collects port-set changes per bridge, one mutation each.
type bridgeMuts struct {
	order    []string
	brs      map[string]*Bridge
	add, del map[string][]string
}

func newBridgeMuts() *bridgeMuts {
	return &bridgeMuts{brs: map[string]*Bridge{}, add: map[string][]string{}, del: map[string][]string{}}
}

func (m *bridgeMuts) note(br *Bridge) {
	if _, ok := m.brs[br.UUID]; !ok {
		m.brs[br.UUID] = br
		m.order = append(m.order, br.UUID)
	}
}

func (m *bridgeMuts) flush(t *txn) {
	for _, u := range m.order {
		t.bridgePorts(m.brs[u], m.add[u], m.del[u])
	}
}

// AttachVMPorts converges the ports recorded for vm to exactly one per
// interface (by index): missing ones are added, changed ones (tag, MAC,
// bridge) updated, ports of removed interfaces deleted. Used only when
// libvirt does not plug VM ports itself (test driver).
func (s *OVS) AttachVMPorts(ctx context.Context, vm string, ifaces []api.VMInterface) error {
	if vm == "" {
		return api.Errorf(api.CodeInvalid, "vm name is empty")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.connected(); err != nil {
		return err
	}
	existing, err := s.vmPorts(ctx, vm)
	if err != nil {
		return err
	}
	byPort, err := s.portBridges(ctx)
	if err != nil {
		return err
	}
	have := map[string]*Port{}
	for i := range existing {
		have[existing[i].Name] = &existing[i]
	}

	t := &txn{s: s}
	muts := newBridgeMuts()
	want := map[string]bool{}
	for idx, ifc := range ifaces {
		if ifc.VLAN < 0 || ifc.VLAN > api.MaxVLAN {
			return api.Errorf(api.CodeInvalid, "interface %d: vlan %d out of range", idx, ifc.VLAN)
		}
		brName := ifc.Bridge
		if brName == "" {
			brName = api.BridgeName(ifc.Network)
		}
		br := &Bridge{Name: brName}
		if err := s.client.Get(ctx, br); err != nil {
			return api.Errorf(api.CodeNotFound, "interface %d: network %q: bridge %s not found", idx, ifc.Network, brName)
		}
		if !owned(br.ExternalIDs) {
			return api.Errorf(api.CodeConflict, "interface %d: bridge %s is not managed by kvm-hostd", idx, brName)
		}
		network := ifc.Network
		if network == "" {
			network = br.ExternalIDs[keyNetwork]
		}
		tag := ifc.VLAN
		if tag == 0 {
			// the access VLAN of the network when the caller did not resolve it
			tag, _ = strconv.ParseInt(br.ExternalIDs[keyVLAN], 10, 64)
		}
		name := vmPortName(vm, idx)
		want[name] = true
		ext := map[string]string{
			keyOwned:   "true",
			keyNetwork: network,
			keyVM:      vm,
			keyMAC:     ifc.MAC,
			keyIfaceID: vm + "-" + strconv.Itoa(idx),
			keyIndex:   strconv.Itoa(idx),
		}
		muts.note(br)

		p := have[name]
		if p != nil && byPort[p.UUID] != nil && byPort[p.UUID].UUID == br.UUID {
			if !eqIntPtr(p.Tag, intPtr(tag)) || !maps.Equal(p.ExternalIDs, ext) {
				u := &Port{UUID: p.UUID, Tag: intPtr(tag), ExternalIDs: ext}
				t.add(s.client.Where(u).Update(u, &u.Tag, &u.ExternalIDs))
			}
			for _, iu := range p.Interfaces {
				i := &Interface{UUID: iu}
				if err := s.client.Get(ctx, i); err == nil && !maps.Equal(i.ExternalIDs, ext) {
					u := &Interface{UUID: iu, ExternalIDs: ext}
					t.add(s.client.Where(u).Update(u, &u.ExternalIDs))
				}
			}
			continue
		}
		if p != nil {
			// on another bridge (network changed) or orphaned: move it
			if old := byPort[p.UUID]; old != nil {
				muts.note(old)
				muts.del[old.UUID] = append(muts.del[old.UUID], p.UUID)
			}
			t.deletePort(&portState{port: *p})
			delete(have, name)
		}
		// "internal" makes ovs-vswitchd create a device for the port, so
		// on a real switch it is up and carries traffic like a tap would.
		pu := t.insertPort(ctx,
			Port{Name: name, Tag: intPtr(tag), ExternalIDs: ext},
			Interface{Name: name, Type: "internal", ExternalIDs: ext},
		)
		muts.add[br.UUID] = append(muts.add[br.UUID], pu)
	}
	for name, p := range have {
		if want[name] {
			continue
		}
		if br := byPort[p.UUID]; br != nil {
			muts.note(br)
			muts.del[br.UUID] = append(muts.del[br.UUID], p.UUID)
		}
		t.deletePort(&portState{port: *p})
	}
	muts.flush(t)
	if _, err := t.commit(ctx); err != nil {
		return err
	}
	if len(t.ops) > 0 {
		s.log.Info("vm ports converged", "vm", vm, "interfaces", len(ifaces), "ops", len(t.ops))
	}
	return nil
}

// DetachVMPorts removes every port recorded for vm.
func (s *OVS) DetachVMPorts(ctx context.Context, vm string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.connected(); err != nil {
		return err
	}
	existing, err := s.vmPorts(ctx, vm)
	if err != nil {
		return err
	}
	if len(existing) == 0 {
		return nil
	}
	byPort, err := s.portBridges(ctx)
	if err != nil {
		return err
	}
	t := &txn{s: s}
	muts := newBridgeMuts()
	for i := range existing {
		p := &existing[i]
		if br := byPort[p.UUID]; br != nil {
			muts.note(br)
			muts.del[br.UUID] = append(muts.del[br.UUID], p.UUID)
		}
		t.deletePort(&portState{port: *p})
	}
	muts.flush(t)
	if _, err := t.commit(ctx); err != nil {
		return err
	}
	s.log.Info("vm ports detached", "vm", vm, "ports", len(existing))
	return nil
}
