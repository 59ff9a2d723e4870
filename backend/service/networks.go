package service

import (
	"context"
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
	return sw.ListNetworks(ctx)
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
	return sw.GetNetwork(ctx, name)
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
	// Never tunnel to ourselves.
	spec.Peers = slices.DeleteFunc(slices.Clone(spec.Peers), func(p api.NetworkPeer) bool { return p.Host == s.cfg.Name })
	unlock := s.locks.Lock("network/" + name)
	defer unlock()
	return sw.EnsureNetwork(ctx, name, spec, s.cfg.TunnelIP)
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
	return sw.DeleteNetwork(ctx, name)
}
