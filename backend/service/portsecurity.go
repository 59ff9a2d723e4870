package service

import (
	"context"
	"net"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Port security is reconciled by the same loop as DHCP (see StartDHCP):
// at startup, every DHCPResync, and when kicked by a VM change or by the
// switch reporting a port change. The address a VM port may send from is
// exactly what the host's DHCP server would hand that NIC, so the two
// always agree.

// nicAddresses is the IPv4 address each of this host's NICs on network n
// is known to have: its static ipv4_address, else on a DHCP network its
// reservation (the only address the server ever hands it). NICs with
// neither are absent: their ports are held to their MAC only, and the
// guest's own report is all there is of their address.
func nicAddresses(n api.Network, vms []api.VM) []api.Lease {
	byMAC := map[string]api.Lease{}
	var order []string
	set := func(l api.Lease) {
		if _, ok := byMAC[l.MAC]; !ok {
			order = append(order, l.MAC)
		}
		byMAC[l.MAC] = l
	}
	if n.DHCP {
		for _, l := range dhcpBindings(n, vms) {
			set(l)
		}
	}
	for _, vm := range vms {
		for _, ifc := range vm.Interfaces {
			hw, err := net.ParseMAC(ifc.MAC)
			if ifc.Network != n.Name || err != nil || ifc.IPv4Address == "" {
				continue
			}
			// The guest is configured with its static address whether or
			// not the DHCP server could reserve it.
			set(api.Lease{MAC: hw.String(), IP: ifc.IPv4Address, VM: vm.Name})
		}
	}
	out := make([]api.Lease, 0, len(order))
	for _, mac := range order {
		out = append(out, byMAC[mac])
	}
	return out
}

// knownAddresses is nicAddresses as port security takes it: MAC -> IPv4.
func knownAddresses(n api.Network, vms []api.VM) map[string]string {
	out := map[string]string{}
	for _, l := range nicAddresses(n, vms) {
		out[l.MAC] = l.IP
	}
	return out
}

// syncPortSecurity converges the flows of every network of this host; it
// reports whether a VM port is waiting for vswitchd to number it.
func (s *Service) syncPortSecurity(ctx context.Context, nets []api.Network) (pending bool) {
	var vms []api.VM
	for _, n := range nets {
		if n.PortSecurity {
			var err error
			if vms, err = s.hv.ListVMs(ctx); err != nil {
				s.log.Warn("port security resync: listing VMs", "error", err)
				return false
			}
			break
		}
	}
	for _, n := range nets {
		p, _, err := s.sw.SyncPortSecurity(ctx, n.Name, knownAddresses(n, vms))
		pending = pending || p
		if err != nil && !api.IsNotFound(err) { // deleted meanwhile
			s.log.Warn("port security not applied", "network", n.Name, "error", err)
		}
	}
	return pending
}
