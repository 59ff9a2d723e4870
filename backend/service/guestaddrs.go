package service

import (
	"net"
	"net/netip"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// The addresses a guest reports (its agent, or the DHCP leases it took)
// are the guest's claim, not a fact: a hostile guest can report anything,
// and whatever passes ends up in the API and in Terraform state, where
// other configuration (DNS records, firewall rules, inventories) trusts
// it. So every address is parsed strictly, re-rendered by netip, and
// checked against what the host knows about the NIC's network.

// Bounds on one NIC's reported addresses (the hypervisor already cut the
// agent's answer; leases and other sources are bounded here too).
const (
	maxNICAddrs      = 64
	maxNICAddrsTried = 4 * maxNICAddrs
	// maxAddrText is longer than any IP address without a zone (45 bytes).
	maxAddrText = 64
)

// nicScope is what one NIC's reported addresses are checked against.
type nicScope struct {
	// subnet is the network's subnet; invalid when it has none (or it is
	// unknown), and then no address counts as in-subnet.
	subnet netip.Prefix
	// taken are addresses this NIC may not claim: the network's gateway and
	// DHCP server addresses, and other VMs' static addresses and DHCP
	// reservations on it.
	taken map[netip.Addr]bool
}

// parseGuestAddr parses one reported address strictly: bounded, printable
// ASCII, an IP without a zone. IPv4-mapped IPv6 addresses are refused so
// an IPv4 address cannot dodge the IPv4 rules in IPv6 form.
func parseGuestAddr(s string) (netip.Addr, bool) {
	if s == "" || len(s) > maxAddrText {
		return netip.Addr{}, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= 0x20 || s[i] >= 0x7f {
			return netip.Addr{}, false
		}
	}
	ip, err := netip.ParseAddr(s)
	if err != nil || ip.Zone() != "" || ip.Is4In6() {
		return netip.Addr{}, false
	}
	return ip, true
}

var (
	limitedBroadcast = netip.MustParseAddr("255.255.255.255")
	thisNetwork      = netip.MustParsePrefix("0.0.0.0/8")
)

// usableAddr says whether ip may be reported as a guest NIC's address at
// all: something another machine could reach the guest at.
//
// IPv6 link-local (fe80::/10) is dropped like IPv4 link-local: it only
// means something together with a zone (the interface on the reader's
// side), which is never reported, every guest has one, and nothing outside
// the link can use it. Addresses are for reaching the guest from elsewhere.
func usableAddr(ip netip.Addr) bool {
	if !ip.IsValid() || ip.IsUnspecified() || ip.IsLoopback() || ip.IsMulticast() ||
		ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() {
		return false
	}
	if ip.Is4() && (ip == limitedBroadcast || thisNetwork.Contains(ip)) {
		return false
	}
	return true
}

// allowed says whether ip may be reported on a NIC with scope sc.
func (sc nicScope) allowed(ip netip.Addr) bool {
	if !usableAddr(ip) || sc.taken[ip] {
		return false
	}
	if sc.subnet.IsValid() && ip.Is4() && sc.subnet.Contains(ip) && sc.subnet.Bits() <= 30 {
		// The subnet's own network and broadcast addresses are nobody's.
		if ip == sc.subnet.Masked().Addr() || ip == subnetBroadcast(sc.subnet) {
			return false
		}
	}
	return true
}

// subnetBroadcast is the last address of an IPv4 prefix.
func subnetBroadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	for i := p.Bits(); i < 32; i++ {
		b[i/8] |= 1 << (7 - i%8)
	}
	return netip.AddrFrom4(b)
}

// filterNICAddrs is what may be reported of raw for one NIC: usable,
// allowed addresses, deduplicated, in the order the guest reported them,
// at most maxNICAddrs, each rendered by netip (never the guest's text).
func filterNICAddrs(raw []string, sc nicScope) []string {
	if len(raw) > maxNICAddrsTried {
		raw = raw[:maxNICAddrsTried]
	}
	var out []string
	seen := map[netip.Addr]bool{}
	for _, s := range raw {
		if len(out) == maxNICAddrs {
			break
		}
		ip, ok := parseGuestAddr(s)
		if !ok || seen[ip] || !sc.allowed(ip) {
			continue
		}
		seen[ip] = true
		out = append(out, ip.String())
	}
	return out
}

// firstIPv4 is the VM's ipv4_address from its first NIC's filtered
// addresses: the first IPv4 inside the network's subnet when it has one
// (a guest with several addresses is reached on the network's), else the
// first IPv4.
func firstIPv4(addrs []string, subnet netip.Prefix) string {
	first := ""
	for _, a := range addrs {
		ip, err := netip.ParseAddr(a)
		if err != nil || !ip.Is4() {
			continue
		}
		if subnet.IsValid() && subnet.Contains(ip) {
			return ip.String()
		}
		if first == "" {
			first = ip.String()
		}
	}
	return first
}

// networkReservations are the addresses of network n on this host and who
// holds them: the gateway and DHCP server addresses (held by no VM, ""),
// every VM NIC's static ipv4_address on it, and, where the network has
// DHCP, every reservation its DHCP server makes (see dhcpBindings). vms
// are this host's VMs. Nil when the network has no subnet: there are no
// reservations then.
func networkReservations(n api.Network, vms []api.VM) map[netip.Addr]string {
	if n.Subnet == nil {
		return nil
	}
	out := map[netip.Addr]string{}
	add := func(s, vm string) {
		if ip, err := netip.ParseAddr(s); err == nil {
			if _, ok := out[ip]; !ok {
				out[ip] = vm
			}
		}
	}
	add(n.Subnet.Gateway, "")
	add(n.DHCPServerIP, "")
	if n.DHCP {
		for _, ip := range derivedReserve(*n.Subnet) {
			add(ip, "") // other hosts' DHCP server addresses
		}
	}
	for _, l := range nicAddresses(n, vms) {
		add(l.IP, l.VM)
	}
	return out
}

// scopeFor is the scope of a NIC of VM vm on network n (nil: unknown),
// given the network's reservations: everything held by another VM or by
// no VM is taken.
func scopeFor(vm string, n *api.Network, res map[netip.Addr]string) nicScope {
	var sc nicScope
	if n == nil {
		return sc
	}
	if n.Subnet != nil {
		if p, err := api.ParseSubnetCIDR(n.Subnet.CIDR); err == nil {
			sc.subnet = p
		}
	}
	for ip, holder := range res {
		if holder != vm {
			if sc.taken == nil {
				sc.taken = map[netip.Addr]bool{}
			}
			sc.taken[ip] = true
		}
	}
	return sc
}

// canonicalMAC is mac in net.HardwareAddr's lower-case form ("" when it is
// not a 6-byte MAC), the key reported addresses are matched by.
func canonicalMAC(mac string) string {
	if len(mac) > 32 {
		return ""
	}
	hw, err := net.ParseMAC(mac)
	if err != nil || len(hw) != 6 {
		return ""
	}
	return hw.String()
}
