package service

import (
	"context"
	"errors"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/backend/dhcp"
	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// DHCP on this host: one server per network with dhcp, answering only this
// host's VMs. Its reservations are computed from libvirt every time (a
// static ipv4_address, else an address derived from the MAC), so nothing
// is stored, a restart loses nothing, and a VM that migrates here is
// served here from the next resync on.

// DHCPResync is how often the reservations are recomputed even when no
// request changed a VM (out-of-band changes, incoming migrations).
const DHCPResync = 10 * time.Second

type dhcpServers struct {
	mu      sync.Mutex
	servers map[string]*dhcpServer // network name
	kick    chan struct{}
	stop    context.CancelFunc
	done    chan struct{}
}

type dhcpServer struct {
	srv *dhcp.Server
	// noIface: the port has no network interface (an OVSDB without a
	// switch, such as the embedded one); said once, retried on resync.
	noIface bool
}

// derivedReserve is how many addresses at the top of a subnet derived
// addresses stay clear of: every host's DHCP server identifier lives
// there (at most MaxDHCPServers of them, one per host), and a host knows
// only its own. At most half of the subnet.
func derivedReserve(s api.Subnet) []string {
	p, err := api.ParseSubnetCIDR(s.CIDR)
	if err != nil {
		return nil
	}
	n := min(api.MaxDHCPServers, (1<<(32-p.Bits())-2)/2)
	var out []string
	for i := range n {
		ip, err := api.DHCPServerIP(s, i)
		if err != nil {
			break
		}
		out = append(out, ip)
	}
	return out
}

// dhcpBindings computes the reservations of network n from this host's
// VMs: static addresses first, then derived ones in MAC order, none twice.
func dhcpBindings(n api.Network, vms []api.VM) []api.Lease {
	if n.Subnet == nil {
		return nil
	}
	sub := *n.Subnet
	reserved := derivedReserve(sub)
	if n.DHCPServerIP != "" && !slices.Contains(reserved, n.DHCPServerIP) {
		reserved = append(reserved, n.DHCPServerIP)
	}
	type nic struct{ mac, vm, static string }
	var nics []nic
	seen := map[string]bool{}
	for _, vm := range vms {
		for _, ifc := range vm.Interfaces {
			hw, err := net.ParseMAC(ifc.MAC)
			if ifc.Network != n.Name || err != nil || seen[hw.String()] {
				continue
			}
			seen[hw.String()] = true
			nics = append(nics, nic{mac: hw.String(), vm: vm.Name, static: ifc.IPv4Address})
		}
	}
	sort.Slice(nics, func(a, b int) bool { return nics[a].mac < nics[b].mac })
	inUse := map[string]bool{}
	var out []api.Lease
	for _, c := range nics {
		if c.static == "" {
			continue
		}
		if api.ValidateStaticIPv4(sub, c.static, n.DHCPServerIP) != nil || inUse[c.static] {
			continue // invalid for this subnet, or taken: serve nothing rather than a clash
		}
		inUse[c.static] = true
		out = append(out, api.Lease{MAC: c.mac, IP: c.static, VM: c.vm})
	}
	for _, c := range nics {
		if c.static != "" {
			continue
		}
		hw, _ := net.ParseMAC(c.mac)
		ip, ok := api.DerivedIPv4(sub, hw, func(a string) bool { return inUse[a] }, reserved...)
		if !ok {
			continue
		}
		inUse[ip] = true
		out = append(out, api.Lease{MAC: c.mac, IP: ip, VM: c.vm})
	}
	sort.Slice(out, func(a, b int) bool { return out[a].MAC < out[b].MAC })
	return out
}

// StartDHCP starts the DHCP servers of every DHCP network found in OVSDB
// and keeps their reservations, and the port-security flows of every
// network, current until StopDHCP. kvm-hostd calls it once it is set up.
func (s *Service) StartDHCP(ctx context.Context) {
	if s.sw == nil {
		return
	}
	d := &s.dhcp
	d.mu.Lock()
	if d.stop != nil {
		d.mu.Unlock()
		return
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d.stop, d.kick, d.done = cancel, make(chan struct{}, 1), make(chan struct{})
	d.mu.Unlock()
	// A VM port appearing (a domain started, a migration landed) gets its
	// port-security flows now, not up to DHCPResync later.
	if w, ok := s.sw.(portWatcher); ok {
		w.WatchPorts(s.dhcpChanged)
	}
	pending := s.resync(ctx)
	go func() {
		defer close(d.done)
		// A port vswitchd has not created yet is retried every second for
		// a while; after that (an OVSDB without a switch) at DHCPResync.
		retries := 0
		for {
			wait := DHCPResync
			if pending && retries < 20 {
				wait, retries = time.Second, retries+1
			}
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			case <-d.kick:
				t.Stop()
				retries = 0
			}
			pending = s.resync(ctx)
		}
	}()
}

// StopDHCP stops every DHCP server.
func (s *Service) StopDHCP() {
	d := &s.dhcp
	d.mu.Lock()
	stop, done := d.stop, d.done
	d.stop = nil
	d.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for name, ds := range d.servers {
		_ = ds.srv.Close()
		delete(d.servers, name)
	}
}

// dhcpChanged asks for a resync soon (a VM was created, changed, deleted
// or moved); it never blocks.
func (s *Service) dhcpChanged() {
	s.dhcp.mu.Lock()
	kick := s.dhcp.kick
	s.dhcp.mu.Unlock()
	if kick == nil {
		return
	}
	select {
	case kick <- struct{}{}:
	default:
	}
}

// resync reconciles what this host derives from OVSDB and libvirt: the
// DHCP servers and the port-security flows. It reports whether something
// waits for vswitchd (a port not created or numbered yet).
func (s *Service) resync(ctx context.Context) (pending bool) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	nets, err := s.sw.ListNetworks(ctx)
	if err != nil {
		s.log.Warn("resync: listing networks", "error", err)
		return false
	}
	dhcpPending := s.syncDHCP(ctx, nets)
	psPending := s.syncPortSecurity(ctx, nets)
	return dhcpPending || psPending
}

// syncDHCP reconciles the servers with OVSDB and libvirt: one per DHCP
// network, configured as the network says, holding the current
// reservations. It reports whether a server is waiting for its port.
func (s *Service) syncDHCP(ctx context.Context, nets []api.Network) (pending bool) {
	var err error
	var vms []api.VM
	want := map[string]api.Network{}
	for _, n := range nets {
		if n.DHCP && n.Subnet != nil {
			want[n.Name] = n
		}
	}
	if len(want) > 0 {
		if vms, err = s.hv.ListVMs(ctx); err != nil {
			s.log.Warn("dhcp resync: listing VMs", "error", err)
			return false
		}
	}
	d := &s.dhcp
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.servers == nil {
		d.servers = map[string]*dhcpServer{}
	}
	for name, ds := range d.servers {
		if _, ok := want[name]; !ok {
			_ = ds.srv.Close()
			delete(d.servers, name)
		}
	}
	for name, n := range want {
		cfg := dhcp.Config{Interface: api.DHCPPortName(name), Subnet: *n.Subnet, MTU: n.MTU, Log: s.log.With("network", name)}
		cfg.ServerIP, _ = netip.ParseAddr(n.DHCPServerIP)
		ds := d.servers[name]
		if ds != nil && !sameDHCPConfig(ds.srv.Config(), cfg) {
			_ = ds.srv.Close()
			ds = nil
		}
		if ds == nil {
			srv, err := dhcp.New(cfg)
			if err != nil {
				s.log.Warn("dhcp server not started", "network", name, "error", err)
				continue
			}
			ds = &dhcpServer{srv: srv}
			d.servers[name] = ds
		}
		b := map[string]netip.Addr{}
		for _, l := range dhcpBindings(n, vms) {
			b[l.MAC], _ = netip.ParseAddr(l.IP)
		}
		ds.srv.SetBindings(b)
		if ds.srv.Running() {
			continue
		}
		switch err := ds.srv.Start(); {
		case err == nil:
			ds.noIface = false
		case errors.Is(err, dhcp.ErrNoInterface):
			pending = true
			if !ds.noIface {
				s.log.Info("dhcp: the network's DHCP port has no network interface on this host (an OVSDB without a switch, or not created yet): reservations are computed but not served",
					"network", name, "interface", cfg.Interface)
				ds.noIface = true
			}
		default:
			s.log.Warn("dhcp server not started", "network", name, "error", err)
		}
	}
	return pending
}

func sameDHCPConfig(a, b dhcp.Config) bool {
	return a.Interface == b.Interface && a.ServerIP == b.ServerIP && a.MTU == b.MTU && a.Subnet.CIDR == b.Subnet.CIDR &&
		a.Subnet.Gateway == b.Subnet.Gateway && slices.Equal(a.Subnet.DNSServers, b.Subnet.DNSServers)
}

// stopDHCPServer stops network's server (before its port goes away).
func (s *Service) stopDHCPServer(name string) {
	s.dhcp.mu.Lock()
	defer s.dhcp.mu.Unlock()
	if ds := s.dhcp.servers[name]; ds != nil {
		_ = ds.srv.Close()
		delete(s.dhcp.servers, name)
	}
}

// withLeases fills the DHCP reservations of the networks that have DHCP,
// computed now from libvirt (not from the last resync).
func (s *Service) withLeases(ctx context.Context, nets ...*api.Network) error {
	var vms []api.VM
	listed := false
	for _, n := range nets {
		if !n.DHCP || n.Subnet == nil {
			continue
		}
		if !listed {
			var err error
			if vms, err = s.hv.ListVMs(ctx); err != nil {
				return err
			}
			listed = true
		}
		n.Leases = dhcpBindings(*n, vms)
	}
	return nil
}

// LeasesFor returns the IPv4 addresses this host's DHCP servers have
// leased to mac (any network): acknowledged, not ended, and still its
// reservation. An address merely reserved is not reported: the guest may
// not have taken it. Empty when none (also right after kvm-hostd restarts
// or a VM migrated here, until the guest renews or rebinds here).
func (s *Service) LeasesFor(mac string) []string {
	hw, err := net.ParseMAC(strings.TrimSpace(mac))
	if err != nil {
		return nil
	}
	s.dhcp.mu.Lock()
	defer s.dhcp.mu.Unlock()
	var out []string
	for _, name := range slices.Sorted(maps.Keys(s.dhcp.servers)) {
		if ip, ok := s.dhcp.servers[name].srv.Leased(hw); ok {
			out = append(out, ip.String())
		}
	}
	return out
}
