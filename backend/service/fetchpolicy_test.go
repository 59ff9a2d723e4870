package service

import (
	"net/netip"
	"strings"
	"testing"
)

func TestFetchPolicy(t *testing.T) {
	own := netip.MustParseAddr("10.0.0.11")
	p := &FetchPolicy{ownAddrs: func() []netip.Addr { return []netip.Addr{own} }}
	refused := []string{
		"127.0.0.1:80", "127.1.2.3:7701", "[::1]:443", "169.254.169.254:80", "[fe80::1]:80",
		"224.0.0.1:80", "[ff02::1]:80", "0.0.0.0:80", "[::]:80", "0.1.2.3:80", "255.255.255.255:80",
		"10.0.0.11:7443", "[::ffff:127.0.0.1]:80", "[::ffff:169.254.169.254]:80",
	}
	for _, a := range refused {
		if err := p.Check("tcp", a); err == nil || !strings.Contains(err.Error(), "--fetch-allow") {
			t.Errorf("%s: %v, want refused naming --fetch-allow", a, err)
		}
	}
	for _, a := range []string{"10.0.0.12:7443", "93.184.216.34:443", "[2001:db8::1]:443", "192.168.1.5:80"} {
		if err := p.Check("tcp", a); err != nil {
			t.Errorf("%s refused: %v", a, err)
		}
	}
	allow, err := ParseFetchAllow("127.0.0.1/32, 169.254.0.0/16,10.0.0.11,::ffff:127.0.0.2/128")
	if err != nil {
		t.Fatal(err)
	}
	p.Allow = allow
	for _, a := range []string{"127.0.0.1:80", "169.254.169.254:80", "10.0.0.11:7443", "127.0.0.2:1"} {
		if err := p.Check("tcp", a); err != nil {
			t.Errorf("%s refused despite --fetch-allow: %v", a, err)
		}
	}
	if err := p.Check("tcp", "127.0.0.3:80"); err == nil {
		t.Error("127.0.0.3 allowed by 127.0.0.1/32")
	}
	for _, bad := range []string{"x", "10.0.0.0/33", "10.0.0.1/8/1", "::1/200"} {
		if _, err := ParseFetchAllow(bad); err == nil {
			t.Errorf("ParseFetchAllow(%q) accepted", bad)
		}
	}
}
