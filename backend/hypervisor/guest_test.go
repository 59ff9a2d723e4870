package hypervisor

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"libvirt.org/go/libvirt"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

func TestTailFile(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "vm-serial.log")
	if err := os.WriteFile(log, []byte("line1\nline2\nline3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b, trunc, err := tailFile(dir, log, 6)
	if err != nil || string(b) != "line3\n" || !trunc {
		t.Fatalf("tail 6: %q %v %v", b, trunc, err)
	}
	if b, trunc, err = tailFile(dir, log, 1000); err != nil || string(b) != "line1\nline2\nline3\n" || trunc {
		t.Fatalf("whole: %q %v %v", b, trunc, err)
	}
	// Missing: empty, no error.
	if b, _, err = tailFile(dir, filepath.Join(dir, "gone.log"), 10); err != nil || len(b) != 0 {
		t.Fatalf("missing: %q %v", b, err)
	}
	// A symlink to a file elsewhere is never followed.
	secret := filepath.Join(t.TempDir(), "secret")
	_ = os.WriteFile(secret, []byte("secret"), 0o600)
	link := filepath.Join(dir, "evil-serial.log")
	if err := os.Symlink(secret, link); err != nil {
		t.Fatal(err)
	}
	if b, _, err = tailFile(dir, link, 10); !api.IsCode(err, api.CodeConflict) || len(b) != 0 {
		t.Fatalf("symlink: %q %v", b, err)
	}
	// A path outside the directory is refused before it is opened.
	if _, _, err = tailFile(dir, secret, 10); !api.IsCode(err, api.CodeConflict) {
		t.Fatalf("outside: %v", err)
	}
	if _, _, err = tailFile(dir, filepath.Join(dir, "..", filepath.Base(secret)), 10); !api.IsCode(err, api.CodeConflict) {
		t.Fatalf("dot-dot: %v", err)
	}
	// A FIFO would block a reader forever: refused.
	fifo := filepath.Join(dir, "fifo-serial.log")
	if err := mkfifo(fifo); err == nil {
		if _, _, err = tailFile(dir, fifo, 10); err == nil || !strings.Contains(err.Error(), "regular") {
			t.Fatalf("fifo: %v", err)
		}
	}
}

func TestAddressesByMAC(t *testing.T) {
	got, _, _ := addressesByMAC([]libvirt.DomainInterface{
		{Name: "lo", Hwaddr: "00:00:00:00:00:00", Addrs: []libvirt.DomainIPAddress{{Addr: "127.0.0.1"}, {Addr: "::1"}}},
		{Name: "eth0", Hwaddr: "52:54:00:AA:BB:CC", Addrs: []libvirt.DomainIPAddress{{Addr: "10.0.0.5", Prefix: 24}, {Addr: "fe80::5054:ff:feaa:bbcc", Prefix: 64}, {Addr: "127.0.0.2"}}},
		{Name: "eth1", Hwaddr: "52:54:00:00:00:01"},
	})
	want := map[string][]string{"52:54:00:aa:bb:cc": {"10.0.0.5", "fe80::5054:ff:feaa:bbcc"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

// The agent's answer is attacker input; the first pass bounds it and lets
// only parsed addresses through.
func TestAddressesByMACHostileAgent(t *testing.T) {
	addrs := func(ss ...string) []libvirt.DomainIPAddress {
		var out []libvirt.DomainIPAddress
		for _, s := range ss {
			out = append(out, libvirt.DomainIPAddress{Addr: s})
		}
		return out
	}
	many := func(n int) []libvirt.DomainIPAddress {
		out := make([]libvirt.DomainIPAddress, n)
		for i := range out {
			out[i].Addr = fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255)
		}
		return out
	}
	const mac = "52:54:00:00:00:01"
	for _, c := range []struct {
		name        string
		ifs         []libvirt.DomainInterface
		want        []string
		dIfs, dAddr int
	}{
		{name: "escape sequences in interface name", ifs: []libvirt.DomainInterface{{Name: "eth0\x1b]52;c;aGk=\x07\x1b[2J", Hwaddr: mac, Addrs: addrs("10.0.0.5")}},
			want: []string{"10.0.0.5"}},
		{name: "escape sequence in zone", ifs: []libvirt.DomainInterface{{Hwaddr: mac, Addrs: addrs("fe80::1%eth0\x1b[2J", "10.0.0.5")}},
			want: []string{"10.0.0.5"}},
		{name: "1 MiB zone", ifs: []libvirt.DomainInterface{{Hwaddr: mac, Addrs: addrs("fe80::1%"+strings.Repeat("A", 1<<20), "10.0.0.5")}},
			want: []string{"10.0.0.5"}},
		{name: "non-UTF-8 address", ifs: []libvirt.DomainInterface{{Hwaddr: mac, Addrs: addrs("10.0.0.\xff", "\xc3\x28", "10.0.0.5")}},
			want: []string{"10.0.0.5"}},
		{name: "20004 addresses on one NIC", ifs: []libvirt.DomainInterface{{Hwaddr: mac, Addrs: many(20004)}},
			want: stringsOf(many(maxAgentAddrsPerMAC)), dAddr: 20004 - maxAgentAddrsPerMAC},
		{name: "same MAC on many interfaces", ifs: func() []libvirt.DomainInterface {
			var out []libvirt.DomainInterface
			for range 3 {
				out = append(out, libvirt.DomainInterface{Hwaddr: mac, Addrs: many(40)})
			}
			return out
		}(), want: append(stringsOf(many(40)), stringsOf(many(24))...), dAddr: 3*40 - maxAgentAddrsPerMAC},
		{name: "too many interfaces", ifs: func() []libvirt.DomainInterface {
			out := make([]libvirt.DomainInterface, maxAgentInterfaces+10)
			for i := range out {
				out[i] = libvirt.DomainInterface{Hwaddr: "52:54:00:00:01:00", Addrs: addrs("10.9.9.9")}
			}
			out[maxAgentInterfaces] = libvirt.DomainInterface{Hwaddr: mac, Addrs: addrs("10.0.0.5")}
			return out
		}(), dIfs: 10},
		{name: "MAC that does not parse", ifs: []libvirt.DomainInterface{{Hwaddr: "52:54:00:00:00:01\x1b[2J", Addrs: addrs("10.0.0.5")}}},
		{name: "long MAC", ifs: []libvirt.DomainInterface{{Hwaddr: strings.Repeat("52:", 1<<16), Addrs: addrs("10.0.0.5")}}},
		{name: "EUI-64 MAC", ifs: []libvirt.DomainInterface{{Hwaddr: "52:54:00:00:00:01:02:03", Addrs: addrs("10.0.0.5")}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, dIfs, dAddr := addressesByMAC(c.ifs)
			if !reflect.DeepEqual(got[mac], c.want) || dIfs != c.dIfs || dAddr != c.dAddr {
				t.Fatalf("got %d addresses %.80v (dropped %d interfaces, %d addresses), want %d %.80v (%d, %d)",
					len(got[mac]), got[mac], dIfs, dAddr, len(c.want), c.want, c.dIfs, c.dAddr)
			}
			for k, v := range got {
				if len(k) != 17 || len(v) > maxAgentAddrsPerMAC {
					t.Fatalf("key %q with %d addresses", k, len(v))
				}
			}
		})
	}
}

func stringsOf(a []libvirt.DomainIPAddress) []string {
	out := make([]string, len(a))
	for i := range a {
		out[i] = a[i].Addr
	}
	return out
}

func TestSerialLogInDomainXML(t *testing.T) {
	x, err := buildDomain(&api.VMSpec{VCPU: 1, MemoryMiB: 64}, domainParams{name: "web-1", virtType: "qemu", meta: &instanceMeta{}, probe: &HostProbe{}})
	if err != nil {
		t.Fatal(err)
	}
	s := x.Devices.Serials
	if len(s) != 1 || s[0].Log == nil || s[0].Log.File != "/var/log/libvirt/qemu/web-1-serial.log" || s[0].Log.Append != "on" {
		t.Fatalf("serial: %+v", s)
	}
	if c := agentChannelOf(x); c == nil || c.Source.UNIX == nil || c.Source.UNIX.Path != "" {
		t.Fatalf("agent channel: %+v", x.Devices.Channels)
	}
}

func mkfifo(path string) error { return syscall.Mkfifo(path, 0o600) }
