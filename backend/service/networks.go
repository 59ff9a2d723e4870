package service

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

func (s *Service) switchOrErr() (Switch, error) {
	if s.sw == nil {
		return nil, api.Errorf(api.CodeUnsupported, "host %s has no Open vSwitch configured (--ovsdb)", s.cfg.Name)
	}
	return s.sw, nil
}

// ListNetworks lists the networks realized on this host.
func (s *Service) ListNetworks(ctx context.Context) ([]api.Network, error) {
	sw, err := s.switchOrErr()
	if err != nil {
		return nil, err
	}
	nets, err := sw.ListNetworks(ctx)
	if err != nil {
		return nil, err
	}
	ptrs := make([]*api.Network, len(nets))
	for i := range nets {
		ptrs[i] = &nets[i]
	}
	if err := s.withLeases(ctx, ptrs...); err != nil {
		return nil, err
	}
	return nets, nil
}

// GetNetwork reads a network.
func (s *Service) GetNetwork(ctx context.Context, name string) (*api.Network, error) {
	if err := api.ValidateName("network", name); err != nil {
		return nil, invalid("%s", err)
	}
	sw, err := s.switchOrErr()
	if err != nil {
		return nil, err
	}
	n, err := sw.GetNetwork(ctx, name)
	if err != nil {
		return nil, err
	}
	if err := s.withLeases(ctx, n); err != nil {
		return nil, err
	}
	return n, nil
}

// PutNetwork creates or converges a network's bridge and tunnels.
func (s *Service) PutNetwork(ctx context.Context, name string, spec api.NetworkSpec) (*api.Network, error) {
	if err := api.ValidateNetworkSpec(name, spec); err != nil {
		return nil, err
	}
	sw, err := s.switchOrErr()
	if err != nil {
		return nil, err
	}
	if spec.Overlay != "" && len(spec.Peers) > 0 && s.cfg.TunnelIP == "" {
		return nil, invalid("host %s has no tunnel IP (--tunnel-ip), so it cannot join overlay network %s", s.cfg.Name, name)
	}
	if spec.Uplink != "" {
		// Checked before OVSDB is touched (see uplink.go).
		if err := s.hostNet.checkUplink(s.cfg.Name, name, spec.Uplink, switchRealizes(sw)); err != nil {
			return nil, err
		}
	}
	// Never tunnel to ourselves.
	spec.Peers = slices.DeleteFunc(slices.Clone(spec.Peers), func(p api.NetworkPeer) bool { return p.Host == s.cfg.Name })
	unlock := s.locks.Lock("network/" + name)
	defer unlock()
	n, err := sw.EnsureNetwork(ctx, name, spec, s.cfg.TunnelIP)
	if err != nil {
		return nil, err
	}
	if err := s.retagVMs(ctx, name, spec.VLAN); err != nil {
		return nil, err
	}
	s.dhcpChanged()
	if err := s.withLeases(ctx, n); err != nil {
		return nil, err
	}
	return n, nil
}

// retagVMs moves the interfaces of every VM on network name to its access
// VLAN, without restarting anything: libvirt retags the OVS ports it
// manages (EnsureNetwork has retagged the ones kvm-hostd records itself),
// and the domain definitions follow, so that a later VM update sees no
// hardware change. Called on every PutNetwork, so a retag that failed on
// one VM converges on the next apply.
func (s *Service) retagVMs(ctx context.Context, name string, vlan int64) error {
	vms, err := s.hv.ListVMs(ctx)
	if err != nil {
		return err
	}
	var failed []string
	for _, vm := range vms {
		for _, ifc := range vm.Interfaces {
			if ifc.Network != name || ifc.VLAN == vlan {
				continue
			}
			unlock := s.locks.Lock("vm/" + vm.Name)
			err := s.hv.SetInterfaceVLAN(ctx, vm.Name, ifc.MAC, vlan)
			unlock()
			if err != nil && !api.IsNotFound(err) { // deleted meanwhile
				failed = append(failed, fmt.Sprintf("VM %s interface %s: %v", vm.Name, ifc.MAC, err))
			}
		}
	}
	if len(failed) > 0 {
		return api.Errorf(api.CodeInternal, "network %s is set to vlan %d on host %s, but retagging failed for %s",
			name, vlan, s.cfg.Name, strings.Join(failed, "; "))
	}
	return nil
}

// DeleteNetwork deletes a network no VM uses.
func (s *Service) DeleteNetwork(ctx context.Context, name string) error {
	if err := api.ValidateName("network", name); err != nil {
		return invalid("%s", err)
	}
	sw, err := s.switchOrErr()
	if err != nil {
		return err
	}
	unlock := s.locks.Lock("network/" + name)
	defer unlock()
	vms, err := s.hv.ListVMs(ctx)
	if err != nil {
		return err
	}
	var users []string
	for _, vm := range vms {
		for _, n := range vm.Interfaces {
			if n.Network == name {
				users = append(users, vm.Name)
				break
			}
		}
	}
	if len(users) > 0 {
		return conflict("network %s is used by VM(s) %s on host %s", name, strings.Join(users, ", "), s.cfg.Name)
	}
	s.stopDHCPServer(name)
	defer s.dhcpChanged()
	return sw.DeleteNetwork(ctx, name)
}
