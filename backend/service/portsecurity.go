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

// knownAddresses maps each of this host's NICs on network n (canonical
// MAC) to the IPv4 address it is known to have: its static ipv4_address,
// else on a DHCP network its reservation (the only address the server
// ever hands it). NICs with neither are absent: their ports are held to
// their MAC only.
func knownAddresses(n api.Network, vms []api.VM) map[string]string {
	out := map[string]string{}
	if n.DHCP {
		for _, l := range dhcpBindings(n, vms) {
			out[l.MAC] = l.IP
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
			out[hw.String()] = ifc.IPv4Address
		}
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
