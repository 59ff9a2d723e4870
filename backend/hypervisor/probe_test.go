package hypervisor

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// The boot sector really runs: plain QEMU (TCG, no libvirt) boots it and
// the token appears on the serial port.
func TestBootSectorPrintsTokenUnderQEMU(t *testing.T) {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	dir := t.TempDir()
	img, serial := filepath.Join(dir, "boot.img"), filepath.Join(dir, "serial.log")
	const token = "kvm-hostd probe test-token ok"
	sector := bootSector(token)
	if len(sector) != 512 || sector[510] != 0x55 || sector[511] != 0xaa {
		t.Fatalf("not a boot sector: %d bytes, signature %x %x", len(sector), sector[510], sector[511])
	}
	if err := writeBootImage(img, token); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, "-accel", "tcg", "-display", "none", "-nodefaults", "-m", "16",
		"-drive", "file="+img+",format=raw,if=virtio,readonly=on", "-serial", "file:"+serial)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	t0 := time.Now()
	for time.Since(t0) < 20*time.Second {
		if out, _ := os.ReadFile(serial); bytes.Contains(out, []byte(token+"\r\n")) {
			t.Logf("token after %s", time.Since(t0))
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	out, _ := os.ReadFile(serial)
	t.Fatalf("no token on the serial port after 20 s; got %q", out)
}

// The real probe on this machine, through the system libvirt: the chosen
// candidate really ran the guest, and nothing of any attempt is left (no
// domain, no directory, no QEMU log).
func TestRealProbe(t *testing.T) {
	uri := os.Getenv("KVM_TEST_LIBVIRT_URI")
	if uri == "" {
		t.Skip("KVM_TEST_LIBVIRT_URI not set")
	}
	l, err := Open(uri, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	p := l.Probe()
	t.Logf("probe: %s/%s disable=%v in %s: %s", p.DomainType, p.CPUMode, p.Disable, p.Took, p.Reason)
	for _, a := range p.Attempts {
		t.Logf("  %s: ran=%v start=%s run=%s %s", probeCandidate{a.DomainType, a.CPUMode, a.Disable}, a.Ran, a.Start, a.Run, a.Err)
	}
	if l.virtType != p.DomainType {
		t.Errorf("new domains get type %q, the probe chose %q", l.virtType, p.DomainType)
	}
	if _, err := os.Stat("/dev/kvm"); err != nil && p.DomainType != domainQEMU {
		t.Errorf("no /dev/kvm, yet the probe chose %q", p.DomainType)
	}
	chosen := slices.IndexFunc(p.Attempts, func(a ProbeAttempt) bool {
		return a.Ran && a.DomainType == p.DomainType && a.CPUMode == p.CPUMode && slices.Equal(a.Disable, p.Disable)
	})
	if chosen < 0 {
		t.Fatalf("the chosen %s/%s %v is not among the candidates that ran the guest: %+v", p.DomainType, p.CPUMode, p.Disable, p.Attempts)
	}
	if a := p.Attempts[chosen]; a.Run <= 0 || a.Run > probeDeadline {
		t.Errorf("run time %s of the chosen candidate", a.Run)
	}
	if p.Took > 10*time.Second {
		t.Errorf("the probe took %s", p.Took)
	}

	doms, err := l.conn.ListAllDomains(0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range doms {
		name, _ := doms[i].GetName()
		doms[i].Free()
		for _, a := range p.Attempts {
			if name == a.Name {
				t.Errorf("probe domain %s left in libvirt", name)
			}
		}
	}
	for _, a := range p.Attempts {
		if a.Name == "" {
			t.Errorf("attempt without a domain name: %+v", a)
			continue
		}
		for _, f := range []string{filepath.Join(os.TempDir(), a.Name), filepath.Join(qemuLogDir, a.Name+".log")} {
			if _, err := os.Stat(f); !os.IsNotExist(err) {
				t.Errorf("probe left %s (%v)", f, err)
			}
		}
	}
}
