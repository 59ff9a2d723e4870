package api

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"slices"
	"strings"
)

// Subnet rules, shared by kvm-hostd (on every request) and the provider (at
// plan time).

// MinSubnetBits and MaxSubnetBits bound a network's prefix length: /30 is
// the smallest subnet with two usable addresses; anything shorter than /8
// is a typo.
const (
	MinSubnetBits  = 8
	MaxSubnetBits  = 30
	MaxDNSServers  = 8
	MaxDHCPServers = 64
)

// ParseSubnetCIDR parses an IPv4 CIDR that names a network (no host bits).
func ParseSubnetCIDR(cidr string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(strings.TrimSpace(cidr))
	if err != nil || cidr != strings.TrimSpace(cidr) {
		return netip.Prefix{}, fmt.Errorf("subnet.cidr %q is not an IPv4 CIDR such as 10.10.0.0/24", cidr)
	}
	if !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("subnet.cidr %q: only IPv4 subnets are supported", cidr)
	}
	if p.Bits() < MinSubnetBits || p.Bits() > MaxSubnetBits {
		return netip.Prefix{}, fmt.Errorf("subnet.cidr %q: the prefix length must be /%d to /%d", cidr, MinSubnetBits, MaxSubnetBits)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("subnet.cidr %q has host bits set; did you mean %s?", cidr, p.Masked())
	}
	return p, nil
}

// parseIPv4 parses a plain dotted-quad IPv4 address (no zone, no prefix).
func parseIPv4(what, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Addr{}, fmt.Errorf("%s %q is not an IPv4 address such as 10.10.0.5", what, s)
	}
	return a, nil
}

// broadcast returns the last address of p.
func broadcast(p netip.Prefix) netip.Addr {
	b := p.Addr().As4()
	v := binary.BigEndian.Uint32(b[:]) | (1<<(32-p.Bits()) - 1)
	var out [4]byte
	binary.BigEndian.PutUint32(out[:], v)
	return netip.AddrFrom4(out)
}

// offset returns the address n after the network address of p.
func offset(p netip.Prefix, n uint32) netip.Addr {
	b := p.Addr().As4()
	var out [4]byte
	binary.BigEndian.PutUint32(out[:], binary.BigEndian.Uint32(b[:])+n)
	return netip.AddrFrom4(out)
}

// usable reports whether a is a host address of p (not the network or
// broadcast address).
func usable(p netip.Prefix, a netip.Addr) bool {
	return p.Contains(a) && a != p.Addr() && a != broadcast(p)
}

// ValidateSubnet checks a network's subnet block.
func ValidateSubnet(s *Subnet) error {
	if s == nil {
		return nil
	}
	p, err := ParseSubnetCIDR(s.CIDR)
	if err != nil {
		return err
	}
	if s.Gateway != "" {
		g, err := parseIPv4("subnet.gateway", s.Gateway)
		if err != nil {
			return err
		}
		if !usable(p, g) {
			return fmt.Errorf("subnet.gateway %s is not a host address of %s", s.Gateway, s.CIDR)
		}
	}
	if len(s.DNSServers) > MaxDNSServers {
		return fmt.Errorf("subnet.dns_servers: at most %d servers", MaxDNSServers)
	}
	seen := map[netip.Addr]bool{}
	for _, d := range s.DNSServers {
		a, err := parseIPv4("subnet.dns_servers entry", d)
		if err != nil {
			return err
		}
		if seen[a] {
			return fmt.Errorf("subnet.dns_servers lists %s twice", d)
		}
		seen[a] = true
	}
	return nil
}

// DHCPServerIP is the DHCP server identifier of the index-th host (0-based,
// in host-name order) of a network with DHCP: the index-th address counted
// down from the top of the subnet, skipping the gateway. These addresses
// are reserved: static addresses may not use them.
func DHCPServerIP(s Subnet, index int) (string, error) {
	p, err := ParseSubnetCIDR(s.CIDR)
	if err != nil {
		return "", err
	}
	if index < 0 || index >= MaxDHCPServers {
		return "", fmt.Errorf("a network with dhcp spans at most %d hosts", MaxDHCPServers)
	}
	a := broadcast(p)
	for i := 0; ; {
		a = a.Prev()
		if !usable(p, a) {
			return "", fmt.Errorf("subnet %s is too small for %d DHCP servers (one per host) and the gateway", s.CIDR, index+1)
		}
		if a.String() == s.Gateway {
			continue
		}
		if i == index {
			return a.String(), nil
		}
		i++
	}
}

// DHCPServerIPs are the server identifiers of a network's hosts, keyed by
// host name (hosts in name order get indexes 0, 1, ...).
func DHCPServerIPs(s Subnet, hosts []string) (map[string]string, error) {
	sorted := slices.Clone(hosts)
	slices.Sort(sorted)
	out := make(map[string]string, len(sorted))
	for i, h := range sorted {
		ip, err := DHCPServerIP(s, i)
		if err != nil {
			return nil, err
		}
		out[h] = ip
	}
	return out, nil
}

// ValidateStaticIPv4 checks a NIC's static address against its network's
// subnet: a host address of the subnet that is neither the gateway nor one
// of the reserved addresses (the DHCP servers').
func ValidateStaticIPv4(s Subnet, addr string, reserved ...string) error {
	p, err := ParseSubnetCIDR(s.CIDR)
	if err != nil {
		return err
	}
	a, err := parseIPv4("ipv4_address", addr)
	if err != nil {
		return err
	}
	if !p.Contains(a) {
		return fmt.Errorf("ipv4_address %s is outside the network's subnet %s", addr, s.CIDR)
	}
	if !usable(p, a) {
		return fmt.Errorf("ipv4_address %s is the network or broadcast address of %s", addr, s.CIDR)
	}
	if addr == s.Gateway {
		return fmt.Errorf("ipv4_address %s is the subnet's gateway", addr)
	}
	if slices.Contains(reserved, addr) {
		return fmt.Errorf("ipv4_address %s is reserved for a host's DHCP server on this network (the top addresses of the subnet, one per host)", addr)
	}
	return nil
}

// ValidateIPv4Syntax checks only that addr is a plain IPv4 address, for
// plan time when the network's subnet is not known yet.
func ValidateIPv4Syntax(addr string) error {
	_, err := parseIPv4("ipv4_address", addr)
	return err
}

// DerivedIPv4 is the address a DHCP server gives a NIC that has no static
// address: a hash of its MAC picked among the subnet's host addresses,
// skipping the gateway, the reserved addresses and those in use (linear
// probing), so it is stable across restarts and migrations without any
// stored lease. ok is false when the subnet has no free address.
func DerivedIPv4(s Subnet, mac net.HardwareAddr, inUse func(string) bool, reserved ...string) (string, bool) {
	p, err := ParseSubnetCIDR(s.CIDR)
	if err != nil {
		return "", false
	}
	size := uint32(1)<<(32-p.Bits()) - 2 // host addresses
	h := fnv.New32a()
	h.Write(mac)
	start := h.Sum32() % size
	for i := uint32(0); i < size; i++ {
		a := offset(p, 1+(start+i)%size).String()
		if a == s.Gateway || slices.Contains(reserved, a) || (inUse != nil && inUse(a)) {
			continue
		}
		return a, true
	}
	return "", false
}

// PrefixLength returns the prefix length of a valid subnet CIDR (0 if
// invalid), for building "addr/len" in network configuration.
func PrefixLength(cidr string) int {
	p, err := ParseSubnetCIDR(cidr)
	if err != nil {
		return 0
	}
	return p.Bits()
}
