package service

import (
	"context"
	"net/netip"
	"strings"
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
// leases.
func (s *Service) fillAddresses(ctx context.Context, vm *api.VM) {
	if vm == nil {
		return
	}
	var byMAC map[string][]string
	source := ""
	if vm.State == api.StateRunning && vm.GuestAgentEnabled() {
		actx, cancel := context.WithTimeout(ctx, AgentQueryTimeout)
		m, err := s.hv.GuestAddresses(actx, vm.Name)
		cancel()
		if err != nil {
			s.log.Debug("guest agent gave no addresses", "vm", vm.Name, "error", err)
		}
		if len(m) > 0 {
			byMAC, source = m, "agent"
		}
	}
	leases := s.leases
	if ls, ok := any(s).(LeaseSource); ok && leases == nil {
		leases = ls // the host's own DHCP server, where it has one
	}
	if source == "" && leases != nil && vm.State == api.StateRunning {
		byMAC = map[string][]string{}
		for _, n := range vm.Interfaces {
			if ips := leases.LeasesFor(strings.ToLower(n.MAC)); len(ips) > 0 {
				byMAC[strings.ToLower(n.MAC)] = ips
				source = "lease"
			}
		}
	}
	vm.AddressSource = source
	vm.IPv4Address = ""
	for i := range vm.Interfaces {
		vm.Interfaces[i].Addresses = byMAC[strings.ToLower(vm.Interfaces[i].MAC)]
	}
	if len(vm.Interfaces) > 0 {
		vm.IPv4Address = firstIPv4(vm.Interfaces[0].Addresses)
	}
}

// firstIPv4 is the first non-loopback IPv4 address of a list.
func firstIPv4(addrs []string) string {
	for _, a := range addrs {
		if ip, err := netip.ParseAddr(a); err == nil && ip.Is4() && !ip.IsLoopback() {
			return ip.String()
		}
	}
	return ""
}

// fillAllAddresses fills the addresses of a list concurrently, so N guests
// without an answering agent cost one AgentQueryTimeout, not N.
func (s *Service) fillAllAddresses(ctx context.Context, vms []api.VM) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, listAgentQueries)
	for i := range vms {
		wg.Add(1)
		go func(vm *api.VM) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			s.fillAddresses(ctx, vm)
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
