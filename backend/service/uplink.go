package service

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
)

// Uplinks and the host's own connectivity. Open vSwitch takes an uplink
// over: the kernel stops delivering its traffic to the host's IP stack, so
// an interface that carries the host's addresses (the one kvm-hostd
// listens on, the one with the default route, a management or storage
// network) would cut the host off its network the moment a network names
// it. api.ValidateUplinkName refuses the names that cannot be an uplink
// anywhere; what only the host knows is checked here, before OVSDB is
// touched:
//
//   - the interface exists (OVS would accept the port and only log that the
//     device is missing);
//   - it is not a loopback device (IFF_LOOPBACK, whatever its name);
//   - it holds no global unicast address, IPv4 or IPv6 (private and ULA
//     addresses count; link-local ones do not: every interface that is up
//     has an IPv6 link-local address, and nothing reaches the host by it);
//   - no default route leaves through it.
//
// The address and route rules cover --listen's interface whatever address
// is given there. They apply only when the switch realizes ports: the
// embedded OVSDB (--ovsdb embedded) writes rows and never touches a device.

// hostNet is how the uplink check sees the host's interfaces; tests
// replace it.
type hostNet struct {
	interfaceByName func(name string) (*net.Interface, error)
	addrs           func(ifi *net.Interface) ([]net.Addr, error)
	// defaultRouteIfaces names the interfaces a default route (IPv4 or
	// IPv6) leaves through.
	defaultRouteIfaces func() ([]string, error)
}

var realHostNet = hostNet{
	interfaceByName:    net.InterfaceByName,
	addrs:              func(ifi *net.Interface) ([]net.Addr, error) { return ifi.Addrs() },
	defaultRouteIfaces: procDefaultRouteIfaces,
}

// checkUplink refuses host interface name as an uplink of network for the
// reasons above; realizes says whether the switch takes devices over.
func (h hostNet) checkUplink(host, network, name string, realizes bool) error {
	ifi, err := h.interfaceByName(name)
	if err != nil {
		return invalid("uplink: host %s has no network interface %q", host, name)
	}
	if ifi.Flags&net.FlagLoopback != 0 {
		return invalid("uplink: %s on host %s is a loopback interface, which cannot be an uplink", name, host)
	}
	if !realizes {
		return nil
	}
	addrs, err := h.addrs(ifi)
	if err != nil {
		return fmt.Errorf("uplink: reading the addresses of %s: %w", name, err)
	}
	var held []string
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().IsGlobalUnicast() {
			held = append(held, p.Addr().String())
		}
	}
	if len(held) > 0 {
		return invalid("uplink: %s holds host %s's address %s; Open vSwitch would take the interface over and the host would lose "+
			"that address (the host's own traffic, kvm-hostd's API included, may depend on it). Use an interface without addresses "+
			"for network %s, or move the addresses off %s first", name, host, strings.Join(held, ", "), network, name)
	}
	defaults, err := h.defaultRouteIfaces()
	if err != nil {
		return fmt.Errorf("uplink: reading the host's routes: %w", err)
	}
	if slices.Contains(defaults, name) {
		return invalid("uplink: host %s's default route leaves through %s; Open vSwitch would take the interface over and the host "+
			"would lose its route. Use an interface without addresses or routes for network %s", host, name, network)
	}
	return nil
}

// procDefaultRouteIfaces reads the default routes of this network
// namespace from /proc/net/route (IPv4) and /proc/net/ipv6_route.
func procDefaultRouteIfaces() ([]string, error) {
	var out []string
	v4, err := os.Open("/proc/net/route")
	if err != nil {
		return nil, err
	}
	defer v4.Close()
	sc := bufio.NewScanner(v4)
	for sc.Scan() {
		// Iface Destination Gateway Flags RefCnt Use Metric Mask ...
		f := strings.Fields(sc.Text())
		if len(f) >= 8 && f[1] == "00000000" && f[7] == "00000000" {
			out = append(out, f[0])
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if v6, err := os.Open("/proc/net/ipv6_route"); err == nil { // absent when IPv6 is disabled
		defer v6.Close()
		sc := bufio.NewScanner(v6)
		for sc.Scan() {
			// dest dest_len src src_len next_hop metric refcnt use flags iface
			f := strings.Fields(sc.Text())
			const rtfReject = 0x0200 // the kernel's "unreachable" defaults sit on lo
			var flags uint64
			if len(f) >= 10 {
				_, _ = fmt.Sscanf(f[8], "%x", &flags)
			}
			if len(f) >= 10 && f[0] == strings.Repeat("0", 32) && f[1] == "00" && flags&rtfReject == 0 && f[9] != "lo" {
				out = append(out, f[9])
			}
		}
	}
	return out, nil
}

// switchRealizes reports whether sw turns bridges and ports into devices,
// so that an uplink is really taken over. Only a switch that says it does
// not (the embedded OVSDB) is exempt from the host-address rules.
func switchRealizes(sw Switch) bool {
	e, ok := sw.(interface{ Embedded() bool })
	return !ok || !e.Embedded()
}
