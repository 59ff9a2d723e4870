package hypervisor

import (
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
	got := addressesByMAC([]libvirt.DomainInterface{
		{Name: "lo", Hwaddr: "00:00:00:00:00:00", Addrs: []libvirt.DomainIPAddress{{Addr: "127.0.0.1"}, {Addr: "::1"}}},
		{Name: "eth0", Hwaddr: "52:54:00:AA:BB:CC", Addrs: []libvirt.DomainIPAddress{{Addr: "10.0.0.5", Prefix: 24}, {Addr: "fe80::5054:ff:feaa:bbcc", Prefix: 64}, {Addr: "127.0.0.2"}}},
		{Name: "eth1", Hwaddr: "52:54:00:00:00:01"},
	})
	want := map[string][]string{"52:54:00:aa:bb:cc": {"10.0.0.5", "fe80::5054:ff:feaa:bbcc"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
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
