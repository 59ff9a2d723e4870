package service

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Each case is one way a hostile guest (its agent, or the leases it asked
// for) tries to get something into the API and Terraform state.
func TestFilterNICAddrsAttacks(t *testing.T) {
	lan := nicScope{
		subnet: netip.MustParsePrefix("10.20.0.0/24"),
		taken: map[netip.Addr]bool{
			netip.MustParseAddr("10.20.0.1"):   true, // gateway
			netip.MustParseAddr("10.20.0.254"): true, // DHCP server
			netip.MustParseAddr("10.20.0.7"):   true, // another VM's static address
		},
	}
	many := make([]string, 20004)
	for i := range many {
		many[i] = fmt.Sprintf("10.%d.%d.%d", 100+i>>16, i>>8&255, i&255)
	}
	for _, c := range []struct {
		name string
		raw  []string
		sc   nicScope
		want []string
	}{
		{"plain", []string{"10.20.0.5", "2001:db8::5"}, lan, []string{"10.20.0.5", "2001:db8::5"}},
		{"escape sequence in zone", []string{"fe80::1%eth0\x1b[2J\x1b]52;c;aGk=\x07", "10.20.0.5"}, lan, []string{"10.20.0.5"}},
		{"zone on a global address", []string{"2001:db8::5%eth0"}, lan, nil},
		{"1 MiB zone", []string{"fe80::1%" + strings.Repeat("A", 1<<20)}, lan, nil},
		{"address padded past the length bound", []string{strings.Repeat("0", 70) + "10.20.0.5"}, lan, nil},
		{"non-UTF-8", []string{"10.20.0.\xff", "\xc3\x28", "10.20.0.5\x00"}, lan, nil},
		{"control characters", []string{"10.20.0.5\n", "\t10.20.0.5", "10.20.0.5\x1b[2J", "\u009b10.20.0.5"}, lan, nil},
		{"unicode digits", []string{"１０.20.0.5"}, lan, nil},
		{"20004 addresses on one NIC", many, nicScope{}, many[:maxNICAddrs]},
		{"duplicates", []string{"10.20.0.5", "10.20.0.5", "2001:db8::5", "2001:DB8:0::5"}, lan, []string{"10.20.0.5", "2001:db8::5"}},
		{"unspecified", []string{"0.0.0.0", "::", "0.1.2.3"}, lan, nil},
		{"limited broadcast", []string{"255.255.255.255"}, lan, nil},
		{"subnet broadcast", []string{"10.20.0.255"}, lan, nil},
		{"subnet network address", []string{"10.20.0.0"}, lan, nil},
		{"multicast", []string{"224.0.0.1", "239.1.2.3", "ff02::1", "ff05::2"}, lan, nil},
		{"loopback", []string{"127.0.0.1", "127.1.2.3", "::1"}, lan, nil},
		{"link-local IPv4", []string{"169.254.1.1"}, lan, nil},
		{"cloud metadata address", []string{"169.254.169.254"}, lan, nil},
		{"IPv6 link-local", []string{"fe80::5054:ff:fe00:1"}, lan, nil},
		{"IPv4-mapped IPv6", []string{"::ffff:169.254.169.254", "::ffff:10.20.0.7"}, lan, nil},
		{"another VM's reserved address", []string{"10.20.0.7", "10.20.0.5"}, lan, []string{"10.20.0.5"}},
		{"the network's gateway", []string{"10.20.0.1"}, lan, nil},
		{"the network's DHCP server", []string{"10.20.0.254"}, lan, nil},
		{"outside the subnet is kept", []string{"192.168.1.5"}, lan, []string{"192.168.1.5"}},
		{"broadcast of a /31 is an address", []string{"10.0.0.1"}, nicScope{subnet: netip.MustParsePrefix("10.0.0.0/31")}, []string{"10.0.0.1"}},
		{"empty", []string{""}, lan, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := filterNICAddrs(c.raw, c.sc)
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("got %d %.200q, want %d %.200q", len(got), got, len(c.want), c.want)
			}
		})
	}
}

func TestFirstIPv4PrefersSubnet(t *testing.T) {
	sub := netip.MustParsePrefix("10.20.0.0/24")
	for _, c := range []struct {
		addrs  []string
		subnet netip.Prefix
		want   string
	}{
		{[]string{"2001:db8::5", "172.17.0.1", "10.20.0.5"}, sub, "10.20.0.5"},
		{[]string{"172.17.0.1", "192.168.0.2"}, sub, "172.17.0.1"},
		{[]string{"172.17.0.1", "10.20.0.5"}, netip.Prefix{}, "172.17.0.1"},
		{[]string{"2001:db8::5"}, sub, ""},
		{nil, sub, ""},
	} {
		if got := firstIPv4(c.addrs, c.subnet); got != c.want {
			t.Errorf("firstIPv4(%v, %v) = %q, want %q", c.addrs, c.subnet, got, c.want)
		}
	}
}

func TestNetworkReservations(t *testing.T) {
	n := api.Network{Name: "lan", DHCP: true, DHCPServerIP: "10.20.0.254",
		Subnet: &api.Subnet{CIDR: "10.20.0.0/24", Gateway: "10.20.0.1"}}
	vms := []api.VM{
		{Name: "a", VMSpec: api.VMSpec{Interfaces: []api.VMInterface{{Network: "lan", MAC: "52:54:00:00:00:0a", IPv4Address: "10.20.0.5"}}}},
		{Name: "b", VMSpec: api.VMSpec{Interfaces: []api.VMInterface{{Network: "lan", MAC: "52:54:00:00:00:0b"}, {Network: "other", MAC: "52:54:00:00:00:0c", IPv4Address: "10.99.0.9"}}}},
	}
	res := networkReservations(n, vms)
	derivedB := ""
	for ip, vm := range res {
		if vm == "b" {
			derivedB = ip.String()
		}
	}
	if res[netip.MustParseAddr("10.20.0.5")] != "a" || derivedB == "" || res[netip.MustParseAddr("10.20.0.1")] != "" ||
		res[netip.MustParseAddr("10.20.0.254")] != "" || len(res) < 4 {
		t.Fatalf("reservations: %v", res)
	}
	if _, ok := res[netip.MustParseAddr("10.99.0.9")]; ok {
		t.Fatalf("another network's static address is reserved here: %v", res)
	}
	// A's own address is its to report; b's is not, and neither is the gateway.
	sa, sb := scopeFor("a", &n, res), scopeFor("b", &n, res)
	if sa.taken[netip.MustParseAddr("10.20.0.5")] || !sb.taken[netip.MustParseAddr("10.20.0.5")] ||
		!sa.taken[netip.MustParseAddr(derivedB)] || sb.taken[netip.MustParseAddr(derivedB)] ||
		!sa.taken[netip.MustParseAddr("10.20.0.1")] {
		t.Fatalf("scopes: a %v, b %v", sa.taken, sb.taken)
	}
	if networkReservations(api.Network{Name: "plain"}, vms) != nil {
		t.Fatal("a network without a subnet has reservations")
	}
}

// addrHV answers VM reads and guest-agent queries from fixed data.
type addrHV struct {
	Hypervisor
	vms    []api.VM
	agent  map[string]map[string][]string
	listed int
}

func (h *addrHV) ListVMs(context.Context) ([]api.VM, error) {
	h.listed++
	return h.vms, nil
}

func (h *addrHV) GuestAddresses(_ context.Context, name string) (map[string][]string, error) {
	return h.agent[name], nil
}

type addrSwitch struct {
	Switch
	nets map[string]api.Network
}

func (s addrSwitch) GetNetwork(_ context.Context, name string) (*api.Network, error) {
	if n, ok := s.nets[name]; ok {
		return &n, nil
	}
	return nil, api.Errorf(api.CodeNotFound, "network %q not found", name)
}

type mapLeases map[string][]string

func (m mapLeases) LeasesFor(mac string) []string { return m[mac] }

// A guest claiming its neighbour's address, or padding its answer with
// junk, gets neither into the VM it reads back as; ipv4_address is the
// in-subnet one; a guest whose agent reports only junk falls back to the
// (filtered) leases.
func TestFillAddressesHostileGuest(t *testing.T) {
	running := func(name, mac, ip string) api.VM {
		return api.VM{Name: name, State: api.StateRunning, VMSpec: api.VMSpec{Interfaces: []api.VMInterface{{Network: "lan", MAC: mac, IPv4Address: ip}}}}
	}
	hv := &addrHV{
		vms: []api.VM{running("victim", "52:54:00:00:00:01", "10.20.0.5"), running("evil", "52:54:00:00:00:02", "")},
		agent: map[string]map[string][]string{
			"evil":  {"52:54:00:00:00:02": {"172.17.0.1", "10.20.0.5", "169.254.169.254", "fe80::1%\x1b[2J", "10.20.0.77", "10.20.0.255"}},
			"junk":  {"52:54:00:00:00:03": {"0.0.0.0", "255.255.255.255"}},
			"upper": {"52:54:00:00:00:0A": {"10.20.0.66"}},
		},
	}
	sw := addrSwitch{nets: map[string]api.Network{"lan": {Name: "lan", DHCP: true, DHCPServerIP: "10.20.0.254",
		Subnet: &api.Subnet{CIDR: "10.20.0.0/24", Gateway: "10.20.0.1"}}}}
	s := &Service{hv: hv, sw: sw, log: slog.New(slog.DiscardHandler),
		leases: mapLeases{"52:54:00:00:00:03": {"10.20.0.1", "10.20.0.33"}}}
	ctx := context.Background()

	evil := running("evil", "52:54:00:00:00:02", "")
	s.fillAddresses(ctx, &evil, s.neighbourhoodOf(nil))
	if got := strings.Join(evil.Interfaces[0].Addresses, ","); got != "172.17.0.1,10.20.0.77" || evil.IPv4Address != "10.20.0.77" || evil.AddressSource != "agent" {
		t.Fatalf("evil: %q ipv4 %q source %q", got, evil.IPv4Address, evil.AddressSource)
	}
	if hv.listed != 1 {
		t.Fatalf("VMs listed %d times", hv.listed)
	}
	junk := running("junk", "52:54:00:00:00:03", "")
	s.fillAddresses(ctx, &junk, s.neighbourhoodOf(nil))
	if got := strings.Join(junk.Interfaces[0].Addresses, ","); got != "10.20.0.33" || junk.AddressSource != "lease" || junk.IPv4Address != "10.20.0.33" {
		t.Fatalf("junk: %q ipv4 %q source %q", got, junk.IPv4Address, junk.AddressSource)
	}
	upper := running("upper", "52:54:00:00:00:0a", "")
	s.fillAddresses(ctx, &upper, s.neighbourhoodOf(nil))
	if upper.IPv4Address != "10.20.0.66" {
		t.Fatalf("MAC spelled in upper case by the agent: %+v", upper)
	}
	// A VM without a single claim reads nothing else.
	hv.listed = 0
	quiet := running("quiet", "52:54:00:00:00:04", "")
	s.fillAddresses(ctx, &quiet, s.neighbourhoodOf(nil))
	if quiet.AddressSource != "" || quiet.Interfaces[0].Addresses != nil || hv.listed != 0 {
		t.Fatalf("quiet: %+v (listed %d)", quiet, hv.listed)
	}
}
