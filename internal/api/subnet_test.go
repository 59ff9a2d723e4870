package api

import (
	"net"
	"strings"
	"testing"
)

func TestValidateSubnet(t *testing.T) {
	for _, tc := range []struct {
		s   Subnet
		err string
	}{
		{Subnet{CIDR: "10.10.0.0/24"}, ""},
		{Subnet{CIDR: "10.10.0.0/24", Gateway: "10.10.0.1", DNSServers: []string{"10.10.0.1", "9.9.9.9"}}, ""},
		{Subnet{CIDR: "10.10.0.1/24"}, "host bits"},
		{Subnet{CIDR: "10.10.0.0"}, "not an IPv4 CIDR"},
		{Subnet{CIDR: "fd00::/64"}, "only IPv4"},
		{Subnet{CIDR: "10.0.0.0/31"}, "prefix length"},
		{Subnet{CIDR: "10.0.0.0/4"}, "prefix length"},
		{Subnet{CIDR: "10.10.0.0/24", Gateway: "10.10.1.1"}, "not a host address"},
		{Subnet{CIDR: "10.10.0.0/24", Gateway: "10.10.0.255"}, "not a host address"},
		{Subnet{CIDR: "10.10.0.0/24", Gateway: "gw"}, "not an IPv4 address"},
		{Subnet{CIDR: "10.10.0.0/24", DNSServers: []string{"1.1.1.1", "1.1.1.1"}}, "twice"},
	} {
		err := ValidateSubnet(&tc.s)
		if (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%+v: err %v, want %q", tc.s, err, tc.err)
		}
	}
}

func TestDHCPServerIPs(t *testing.T) {
	s := Subnet{CIDR: "10.10.0.0/24", Gateway: "10.10.0.253"}
	got, err := DHCPServerIPs(s, []string{"host-b", "host-a", "host-c"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"host-a": "10.10.0.254", "host-b": "10.10.0.252", "host-c": "10.10.0.251"}
	for h, ip := range want {
		if got[h] != ip {
			t.Errorf("%s: %s, want %s", h, got[h], ip)
		}
	}
	if _, err := DHCPServerIPs(Subnet{CIDR: "10.0.0.0/30", Gateway: "10.0.0.1"}, []string{"a", "b"}); err == nil {
		t.Error("a /30 with a gateway has room for one server only")
	}
}

func TestValidateStaticIPv4(t *testing.T) {
	s := Subnet{CIDR: "10.10.0.0/24", Gateway: "10.10.0.1"}
	for addr, want := range map[string]string{
		"10.10.0.10":    "",
		"10.10.1.10":    "outside",
		"10.10.0.0":     "network or broadcast",
		"10.10.0.255":   "network or broadcast",
		"10.10.0.1":     "gateway",
		"10.10.0.254":   "reserved",
		"10.10.0.10/24": "not an IPv4 address",
		"::1":           "not an IPv4 address",
	} {
		err := ValidateStaticIPv4(s, addr, "10.10.0.254")
		if (err == nil) != (want == "") || (err != nil && !strings.Contains(err.Error(), want)) {
			t.Errorf("%s: err %v, want %q", addr, err, want)
		}
	}
}

func TestDerivedIPv4(t *testing.T) {
	s := Subnet{CIDR: "10.10.0.0/29", Gateway: "10.10.0.1"} // hosts .1-.6
	mac, _ := net.ParseMAC("52:54:00:12:34:56")
	a, ok := DerivedIPv4(s, mac, nil, "10.10.0.6")
	if !ok {
		t.Fatal("no address")
	}
	if b, _ := DerivedIPv4(s, mac, nil, "10.10.0.6"); a != b {
		t.Errorf("not stable: %s then %s", a, b)
	}
	used := map[string]bool{}
	for i := 0; i < 4; i++ {
		a, ok := DerivedIPv4(s, mac, func(ip string) bool { return used[ip] }, "10.10.0.6")
		if !ok || used[a] || a == "10.10.0.1" || a == "10.10.0.6" {
			t.Fatalf("round %d: %s %v (used %v)", i, a, ok, used)
		}
		used[a] = true
	}
	if a, ok := DerivedIPv4(s, mac, func(ip string) bool { return used[ip] }, "10.10.0.6"); ok {
		t.Errorf("full subnet gave %s", a)
	}
}
