package service

import (
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// fakeHostNet is a host with the given interfaces, addresses and default
// routes.
func fakeHostNet(ifs map[string]net.Flags, addrs map[string][]string, defaults ...string) hostNet {
	return hostNet{
		interfaceByName: func(name string) (*net.Interface, error) {
			f, ok := ifs[name]
			if !ok {
				return nil, errors.New("no such network interface")
			}
			return &net.Interface{Name: name, Flags: f}, nil
		},
		addrs: func(ifi *net.Interface) ([]net.Addr, error) {
			var out []net.Addr
			for _, a := range addrs[ifi.Name] {
				ip, n, err := net.ParseCIDR(a)
				if err != nil {
					return nil, err
				}
				n.IP = ip
				out = append(out, n)
			}
			return out, nil
		},
		defaultRouteIfaces: func() ([]string, error) { return defaults, nil },
	}
}

func TestCheckUplink(t *testing.T) {
	up := net.FlagUp | net.FlagBroadcast
	h := fakeHostNet(map[string]net.Flags{
		"lo": net.FlagUp | net.FlagLoopback, "lo2": net.FlagUp | net.FlagLoopback,
		"eth0": up, "mgmt0": up, "eth1": up, "ula0": up, "gw0": up, "free0": up, "down0": 0,
	}, map[string][]string{
		"eth0":  {"192.0.2.10/24", "fe80::1/64"}, // holds the --listen address
		"mgmt0": {"10.1.2.3/16"},                 // private addresses count
		"ula0":  {"fd00::5/64"},                  // and ULAs
		"free0": {"fe80::2/64"},                  // a link-local address is not the host's
	}, "gw0")
	for name, want := range map[string]string{
		"nope0": `no network interface "nope0"`,
		"lo":    "loopback",
		"lo2":   "loopback", // by flag, whatever the name
		"eth0":  "address 192.0.2.10",
		"mgmt0": "address 10.1.2.3",
		"ula0":  "address fd00::5",
		"gw0":   "default route",
	} {
		err := h.checkUplink("host-a", "lan", name, true)
		if !api.IsCode(err, api.CodeInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("uplink %s: %v, want 400 containing %q", name, err, want)
		}
	}
	for _, name := range []string{"free0", "eth1", "down0"} {
		if err := h.checkUplink("host-a", "lan", name, true); err != nil {
			t.Errorf("uplink %s: %v", name, err)
		}
	}
	// The embedded OVSDB takes nothing over: only existence and loopback
	// are checked there.
	if err := h.checkUplink("host-a", "lan", "eth0", false); err != nil {
		t.Errorf("eth0 on the embedded switch: %v", err)
	}
	if err := h.checkUplink("host-a", "lan", "lo2", false); err == nil {
		t.Error("a loopback device accepted on the embedded switch")
	}
}

// The same rules on this machine's real interfaces: its loopback device,
// and the interfaces holding its addresses and default route.
func TestCheckUplinkRealInterfaces(t *testing.T) {
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	defaults, err := procDefaultRouteIfaces()
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, ifi := range ifs {
		addrs, _ := ifi.Addrs()
		global := false
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.IsGlobalUnicast() {
				global = true
			}
		}
		mustRefuse := ifi.Flags&net.FlagLoopback != 0 || global
		for _, d := range defaults {
			mustRefuse = mustRefuse || d == ifi.Name
		}
		err := realHostNet.checkUplink("this", "lan", ifi.Name, true)
		if mustRefuse && !api.IsCode(err, api.CodeInvalid) {
			t.Errorf("%s (flags %v, addresses %v) accepted as an uplink: %v", ifi.Name, ifi.Flags, addrs, err)
		}
		if !mustRefuse && err != nil {
			t.Errorf("%s (no host address) refused: %v", ifi.Name, err)
		}
		if mustRefuse {
			checked++
		}
	}
	if checked == 0 {
		t.Fatal("no loopback interface found")
	}
	t.Logf("default routes via %v", defaults)
}
