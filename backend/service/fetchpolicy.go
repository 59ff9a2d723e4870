package service

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// FetchPolicy decides which addresses kvm-hostd's own outbound HTTP
// (source_url downloads, host-to-host copies) may connect to. By default it
// refuses loopback, link-local (169.254.169.254, the cloud metadata
// service, among them), multicast, unspecified and the host's own
// addresses: a caller must not be able to make the host fetch from itself
// or its neighbours' private services. Allow lists networks that are
// reachable in addition (--fetch-allow).
//
// The check runs on the address actually connected to, after name
// resolution, for the first request and every redirect, so a DNS name
// that resolves (or re-resolves) to a refused address is refused too.
type FetchPolicy struct {
	Allow []netip.Prefix
	// ownAddrs lists the host's addresses; nil reads the interfaces at
	// each check (they change).
	ownAddrs func() []netip.Addr
}

// ParseFetchAllow parses "127.0.0.1/32,10.1.0.0/16" (a bare address is a
// single host).
func ParseFetchAllow(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if !strings.Contains(f, "/") {
			a, err := netip.ParseAddr(f)
			if err != nil {
				return nil, fmt.Errorf("%q is not an address or CIDR network", f)
			}
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR network: %v", f, err)
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// Check is the Fetcher's CheckAddr: it refuses address (host:port) unless
// the policy allows it.
func (p *FetchPolicy) Check(_, address string) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return fmt.Errorf("fetch: bad address %q", address)
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("fetch: %q is not an IP address", host)
	}
	a = a.Unmap().WithZone("")
	for _, allowed := range p.Allow {
		if allowed.Contains(a) {
			return nil
		}
	}
	if why := p.refused(a); why != "" {
		return fmt.Errorf("fetching from %s is not allowed: it is %s (kvm-hostd --fetch-allow lists networks to allow)", a, why)
	}
	return nil
}

func (p *FetchPolicy) refused(a netip.Addr) string {
	switch {
	case a.IsLoopback():
		return "a loopback address"
	case a.IsLinkLocalUnicast():
		return "a link-local address (e.g. a cloud metadata service)"
	case a.IsMulticast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast():
		return "a multicast address"
	case a.IsUnspecified():
		return "the unspecified address"
	case a == netip.IPv4Unspecified() || a.Is4() && a.As4()[0] == 0:
		return "in 0.0.0.0/8"
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "the broadcast address"
	}
	own := p.ownAddrs
	if own == nil {
		own = interfaceAddrs
	}
	for _, o := range own() {
		if o == a {
			return "one of this host's own addresses"
		}
	}
	return ""
}

func interfaceAddrs() []netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}
