package service

import (
	"context"
	"net/netip"
	"sync"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// neighbourhood is what a VM's reported addresses are checked against:
// the networks of its NICs and, per network with a subnet, the addresses
// held by its gateway, DHCP servers and this host's VMs. Each is read at
// most once and only when a guest reported something, so reading a VM
// without addresses costs nothing extra. Safe for concurrent use.
type neighbourhood struct {
	s *Service

	mu   sync.Mutex
	nets map[string]netEntry
	// vms are this host's VMs (names, NICs), listed when first needed
	// unless the caller already had the list.
	vms    []api.VM
	listed bool
}

type netEntry struct {
	n   *api.Network // nil: not on this host
	res map[netip.Addr]string
}

// neighbourhoodOf starts a neighbourhood; vms, when not nil, are all of
// this host's VMs (see snapshotNICs), so they are not listed again.
func (s *Service) neighbourhoodOf(vms []api.VM) *neighbourhood {
	return &neighbourhood{s: s, nets: map[string]netEntry{}, vms: vms, listed: vms != nil}
}

// scope is the scope of a NIC of VM vm on network name. An error means the
// host's state could not be read, and nothing should be reported.
func (nb *neighbourhood) scope(ctx context.Context, vm, name string) (nicScope, error) {
	nb.mu.Lock()
	defer nb.mu.Unlock()
	e, ok := nb.nets[name]
	if !ok {
		var err error
		if e, err = nb.load(ctx, name); err != nil {
			return nicScope{}, err
		}
		nb.nets[name] = e
	}
	return scopeFor(vm, e.n, e.res), nil
}

func (nb *neighbourhood) load(ctx context.Context, name string) (netEntry, error) {
	if nb.s.sw == nil {
		return netEntry{}, nil
	}
	n, err := nb.s.sw.GetNetwork(ctx, name)
	if api.IsNotFound(err) {
		return netEntry{}, nil // the NIC's network is gone: no subnet, no reservations
	}
	if err != nil {
		return netEntry{}, err
	}
	if n.Subnet == nil {
		return netEntry{n: n}, nil
	}
	if !nb.listed {
		vms, err := nb.s.hv.ListVMs(ctx)
		if err != nil {
			return netEntry{}, err
		}
		nb.vms, nb.listed = snapshotNICs(vms), true
	}
	return netEntry{n: n, res: networkReservations(*n, nb.vms)}, nil
}

// snapshotNICs copies what reservations are computed from (names, NICs'
// networks, MACs and static addresses), so they can be computed while the
// listed VMs' addresses are being filled in.
func snapshotNICs(vms []api.VM) []api.VM {
	out := make([]api.VM, len(vms))
	for i, vm := range vms {
		out[i].Name = vm.Name
		for _, n := range vm.Interfaces {
			out[i].Interfaces = append(out[i].Interfaces, api.VMInterface{Network: n.Network, MAC: n.MAC, IPv4Address: n.IPv4Address})
		}
	}
	return out
}
