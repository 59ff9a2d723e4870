package service

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// AgentQueryTimeout bounds the guest-agent query a VM read makes: an agent
// that does not answer (guest still booting, agent hung) means no
// addresses, never a slow or failed read.
const AgentQueryTimeout = 1500 * time.Millisecond

// listAgentQueries bounds the agent queries one list runs at a time.
const listAgentQueries = 8

// LeaseSource answers which addresses this host's DHCP server leased to a
// MAC: the fallback when a guest's agent reports none.
type LeaseSource interface {
	LeasesFor(mac string) []string
}

// SetLeaseSource installs the DHCP lease fallback of VM reads. Without one,
// a Service that answers LeasesFor itself (its DHCP servers) is used.
// Call it before serving requests.
func (s *Service) SetLeaseSource(ls LeaseSource) { s.leases = ls }

// fillAddresses sets the addresses a running guest reports: from its agent
// when it answers within AgentQueryTimeout, else from this host's DHCP
// leases. Either is filtered (see guestaddrs.go) against nb, which loads
// the host's networks and reservations only when there is something to
// check.
func (s *Service) fillAddresses(ctx context.Context, vm *api.VM, nb *neighbourhood) {
	if vm == nil {
		return
	}
	vm.AddressSource, vm.IPv4Address = "", ""
	for i := range vm.Interfaces {
		vm.Interfaces[i].Addresses = nil
	}
	if vm.State != api.StateRunning {
		return
	}
	if vm.GuestAgentEnabled() {
		actx, cancel := context.WithTimeout(ctx, AgentQueryTimeout)
		m, err := s.hv.GuestAddresses(actx, vm.Name)
		cancel()
		if err != nil {
			s.log.Debug("guest agent gave no addresses", "vm", vm.Name, "error", err)
		}
		if len(m) > 0 && s.applyAddresses(ctx, vm, m, nb) {
			vm.AddressSource = "agent"
			return
		}
	}
	leases := s.leases
	if ls, ok := any(s).(LeaseSource); ok && leases == nil {
		leases = ls // the host's own DHCP server, where it has one
	}
	if leases == nil {
		return
	}
	m := map[string][]string{}
	for _, n := range vm.Interfaces {
		if mac := canonicalMAC(n.MAC); mac != "" {
			if ips := leases.LeasesFor(mac); len(ips) > 0 {
				m[mac] = ips
			}
		}
	}
	// Leases are this host's own records, but filtered all the same: the
	// guest chose what to ask for, and a reservation may have moved since.
	if len(m) > 0 && s.applyAddresses(ctx, vm, m, nb) {
		vm.AddressSource = "lease"
	}
}

// applyAddresses sets vm's NIC addresses and ipv4_address from byMAC (the
// guest's claim, by MAC), filtered per NIC, and says whether any is left.
// When the host's networks cannot be read, nothing is reported: an
// address that cannot be checked is not passed on.
func (s *Service) applyAddresses(ctx context.Context, vm *api.VM, byMAC map[string][]string, nb *neighbourhood) bool {
	claims := make(map[string][]string, len(byMAC))
	// Sorted, so two spellings of one MAC merge in the same order every time.
	for _, mac := range slices.Sorted(maps.Keys(byMAC)) {
		if c := canonicalMAC(mac); c != "" {
			claims[c] = append(claims[c], byMAC[mac]...)
		}
	}
	kept := false
	for i := range vm.Interfaces {
		nic := &vm.Interfaces[i]
		mac := canonicalMAC(nic.MAC)
		if mac == "" || len(claims[mac]) == 0 {
			continue
		}
		sc, err := nb.scope(ctx, vm.Name, nic.Network)
		if err != nil {
			s.log.Debug("guest addresses not reported: the host's networks could not be read", "vm", vm.Name, "error", err)
			for j := range vm.Interfaces {
				vm.Interfaces[j].Addresses = nil
			}
			vm.IPv4Address = ""
			return false
		}
		nic.Addresses = filterNICAddrs(claims[mac], sc)
		if i == 0 {
			vm.IPv4Address = firstIPv4(nic.Addresses, sc.subnet)
		}
		kept = kept || len(nic.Addresses) > 0
	}
	return kept
}

// fillAllAddresses fills the addresses of a list concurrently, so N guests
// without an answering agent cost one AgentQueryTimeout, not N. The list
// is all of this host's VMs, so the reservations come from it.
func (s *Service) fillAllAddresses(ctx context.Context, vms []api.VM) {
	nb := s.neighbourhoodOf(snapshotNICs(vms))
	var wg sync.WaitGroup
	sem := make(chan struct{}, listAgentQueries)
	for i := range vms {
		wg.Add(1)
		go func(vm *api.VM) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			s.fillAddresses(ctx, vm, nb)
		}(&vms[i])
	}
	wg.Wait()
}

// Console returns the tail of a VM's serial log, at most max bytes
// (DefaultConsoleBytes when max <= 0, at most MaxConsoleBytes).
func (s *Service) Console(ctx context.Context, name string, max int64) (*api.Console, error) {
	if err := validateVMName(name); err != nil {
		return nil, err
	}
	if max <= 0 {
		max = DefaultConsoleBytes
	}
	if max > MaxConsoleBytes {
		return nil, invalid("bytes must be at most %d", MaxConsoleBytes)
	}
	b, truncated, err := s.hv.ConsoleLog(ctx, name, max)
	if err != nil {
		return nil, err
	}
	return &api.Console{VM: name, Text: string(b), Truncated: truncated}, nil
}

// Console tail bounds.
const (
	DefaultConsoleBytes = 64 << 10
	MaxConsoleBytes     = 1 << 20
)
