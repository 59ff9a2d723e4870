package kvm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/terraform"

	"github.com/kvmfleet/terraform-provider-kvm/internal/guestimage"
	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

// encPattern is the 1 MiB the guest writes to both data disks: a marker
// line repeated, so it is found in a plain file and, if encryption did
// not happen, in the encrypted one.
const encMarker = "KVM-ENCRYPTION-PROOF-3f9a1c7e-"

func encPattern() []byte {
	line := []byte(encMarker + strings.Repeat("x", 64-len(encMarker)-1) + "\n")
	return bytes.Repeat(line, (1<<20)/len(line)+1)[:1<<20]
}

func encryptionHCL(providerHCL, imageURL, host string, running bool) string {
	extra := ""
	if !running {
		extra = "  running          = false\n"
	}
	return providerHCL + fmt.Sprintf(`
locals {
  host = %q
}

resource "kvm_disk" "base_a" {
  name       = "enc-base"
  host       = "host-a"
  source_url = %q
}

resource "kvm_disk" "base_b" {
  name       = "enc-base"
  host       = "host-b"
  source_url = %q
}

resource "kvm_disk" "root" {
  name         = "enc-root"
  host         = local.host
  base_disk_id = local.host == "host-a" ? kvm_disk.base_a.id : kvm_disk.base_b.id
}

resource "kvm_disk" "secret" {
  name       = "enc-secret"
  host       = local.host
  size_mib   = 64
  encryption = { key = "prod" }
}

# On a directory pool both hosts share (standing in for NFS): the VM's
# move leaves it in place, and host-b opens the same LUKS file.
resource "kvm_disk" "shared_secret" {
  name       = "enc-shared"
  host       = local.host
  pool       = %q
  size_mib   = 64
  encryption = { key = "prod" }
}

resource "kvm_disk" "control" {
  name     = "enc-control"
  host     = local.host
  size_mib = 64
}

resource "kvm_vm" "enc" {
  name             = "enc"
  host             = local.host
  vcpu             = 1
  memory_mib       = 384
  shutdown_timeout = 120
%s  disks            = [{ disk_id = kvm_disk.root.id }, { disk_id = kvm_disk.secret.id }, { disk_id = kvm_disk.control.id }, { disk_id = kvm_disk.shared_secret.id }]
  cloud_init       = { meta_data = "instance-id: enc\nlocal-hostname: enc\n" }
}
`, host, imageURL, imageURL, encSharedPool, extra)
}

// encSharedPool is a directory both namespace hosts see at one path,
// defined as a dir pool on each and served with --shared-pool.
const (
	encSharedPool = "kvmsharedenc"
	encSharedDir  = "/var/tmp/kvm-shared-enc-test"
)

// TestAccEncryptionReal proves encrypted disks on real QEMU, on ONE guest
// with an encrypted data disk (vdb), a plain control disk (vdc) and an
// encrypted disk on a shared directory pool (vdd): the guest writes the
// same 1 MiB pattern to all three block devices; the pattern is in the
// control disk's file on the host and not in either encrypted one's; the guest reads it back after a reboot, after a cold start that
// follows a kvm-hostd restart with libvirtd's secrets gone (as after a
// libvirtd restart), and after a live migration to a second host holding
// the same key (the shared disk is not copied: host-b opens the same
// file, with the secret its kvm-hostd registered when it reserved room for
// the VM). No key byte is in the domain XML, the host's log or the
// Terraform state.
func TestAccEncryptionReal(t *testing.T) {
	realstack.Require(t, "libvirtd", "virtlogd", "virsh", "nsenter", "ip", "qemu-system-x86_64")
	testAccPreCheck(t)
	parallelNSHostTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	start := time.Now()
	image, err := guestimage.Path(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = os.RemoveAll(encSharedDir)
	if err := os.MkdirAll(encSharedDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(encSharedDir) })
	hs := realstack.StartHostNamespaces(ctx, t, realstack.HostsOptions{Names: []string{"a", "b"}})
	ha, hb := hs.Host("a"), hs.Host("b")
	byHost := map[string]*realstack.NSHost{"host-a": ha, "host-b": hb}
	for _, h := range []*realstack.NSHost{ha, hb} {
		for _, args := range [][]string{
			{"pool-define-as", encSharedPool, "dir", "--target", encSharedDir},
			{"pool-start", encSharedPool},
		} {
			if out, err := exec.Command("virsh", append([]string{"-c", h.LocalURI}, args...)...).CombinedOutput(); err != nil {
				t.Fatalf("virsh %v on %s: %v\n%s", args, h.Name, err, out)
			}
		}
	}

	imageURL := serveGuestImage(t, image)

	// The same master key on both hosts.
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	keyDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(keyDir, "prod.key"), key, 0o600); err != nil {
		t.Fatal(err)
	}
	keyHex := hex.EncodeToString(key)

	const poolDir = "/var/lib/libvirt/images/kvm-encryption-test"
	c := startMigrationHosts(t, byHost, poolDir, "--key-dir", keyDir, "--pool", encSharedPool, "--shared-pool", encSharedPool)
	// A restarted kvm-hostd listens on a new port: the provider reads
	// host-a's endpoint from a file at every plan, rewritten on restart.
	urlFile := filepath.Join(t.TempDir(), "host-a.url")
	writeURL := func() {
		if err := os.WriteFile(urlFile, []byte(c.Host("host-a").URL), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeURL()
	providerHCL := strings.Replace(c.ProviderHCL(), fmt.Sprintf("endpoint = %q", c.Host("host-a").URL),
		fmt.Sprintf("endpoint = trimspace(file(%q))", urlFile), 1)
	hcl := func(host string, running bool) string { return encryptionHCL(providerHCL, imageURL, host, running) }
	agentOn := func(h *realstack.NSHost) guestAgent { return guestAgent{h: h, domain: "enc", logf: t.Logf} }
	ready := func(h *realstack.NSHost) error {
		t0 := time.Now()
		if err := agentOn(h).waitReady(ctx, 12*time.Minute); err != nil {
			return fmt.Errorf("%w\n%s", err, guestConsole(h, "enc"))
		}
		t.Logf("guest agent on %s answers after %s (test at %s)", h.Name, time.Since(t0).Round(time.Second), time.Since(start).Round(time.Second))
		return nil
	}
	pattern := encPattern()
	sum := sha256.Sum256(pattern)
	want := hex.EncodeToString(sum[:])
	// readBack checks both disks hold the pattern, read raw from the guest.
	readBack := func(h *realstack.NSHost, when string) error {
		for _, dev := range []string{"/dev/vdb", "/dev/vdc", "/dev/vdd"} {
			out, err := agentOn(h).run(ctx, "/bin/sh", "-c", "dd if="+dev+" bs=1M count=1 iflag=direct 2>/dev/null | sha256sum")
			if err != nil {
				return fmt.Errorf("%s: reading %s: %w", when, dev, err)
			}
			if got := strings.Fields(out); len(got) == 0 || got[0] != want {
				return fmt.Errorf("%s: %s holds %q, want the pattern (%s)", when, dev, out, want)
			}
		}
		t.Logf("%s: the guest reads the pattern back from all three disks (test at %s)", when, time.Since(start).Round(time.Second))
		return nil
	}
	file := func(h *realstack.NSHost, vol string) string {
		return filepath.Join(h.StateDir, "lib", "images", "kvm-encryption-test", vol)
	}
	// noKeyIn fails if the master key (raw or hex) appears in b.
	noKeyIn := func(what string, b []byte) error {
		if bytes.Contains(b, key) || bytes.Contains(b, []byte(keyHex)) {
			return fmt.Errorf("the master key appears in %s", what)
		}
		return nil
	}
	domXMLOn := func(h *realstack.NSHost) ([]byte, error) {
		return exec.Command("virsh", "-c", h.LocalURI, "dumpxml", "enc").CombinedOutput()
	}
	// notInSharedFile checks the encrypted shared disk's one file.
	notInSharedFile := func() error {
		f := filepath.Join(encSharedDir, "enc-shared")
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		if !bytes.HasPrefix(b, []byte("QFI\xfb")) {
			return fmt.Errorf("%s is not a qcow2 file", f)
		}
		if bytes.Contains(b, []byte(encMarker)) {
			return fmt.Errorf("the pattern is in the shared encrypted file %s in clear", f)
		}
		t.Logf("pattern not in the shared encrypted file (%d bytes)", len(b))
		return nil
	}
	var uuid string

	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config: hcl("host-a", true),
				Check: func(st *terraform.State) error {
					uuid = st.RootModule().Resources["kvm_vm.enc"].Primary.ID
					if err := ready(ha); err != nil {
						return err
					}
					if err := agentOn(ha).writeFile(ctx, "/run/kvm-enc-pattern", pattern); err != nil {
						return err
					}
					for _, dev := range []string{"/dev/vdb", "/dev/vdc", "/dev/vdd"} {
						if _, err := agentOn(ha).run(ctx, "/bin/sh", "-c",
							"dd if=/run/kvm-enc-pattern of="+dev+" bs=1M count=1 oflag=direct conv=fsync 2>&1"); err != nil {
							return fmt.Errorf("writing %s: %w", dev, err)
						}
					}
					if err := readBack(ha, "after the write"); err != nil {
						return err
					}
					encThroughput(ctx, t, agentOn(ha))
					enc, err := os.ReadFile(file(ha, "enc-secret"))
					if err != nil {
						return err
					}
					plain, err := os.ReadFile(file(ha, "enc-control"))
					if err != nil {
						return err
					}
					if !bytes.Contains(plain, []byte(encMarker)) {
						return fmt.Errorf("the pattern is not in the control disk's file %s: the check proves nothing", file(ha, "enc-control"))
					}
					if bytes.Contains(enc, []byte(encMarker)) {
						return fmt.Errorf("the pattern is in the encrypted disk's file %s in clear", file(ha, "enc-secret"))
					}
					if !bytes.HasPrefix(enc, []byte("QFI\xfb")) {
						return fmt.Errorf("%s is not a qcow2 file", file(ha, "enc-secret"))
					}
					if err := notInSharedFile(); err != nil {
						return err
					}
					t.Logf("pattern in the control file (%d bytes), not in the encrypted file (%d bytes)", len(plain), len(enc))
					x, err := domXMLOn(ha)
					if err != nil {
						return fmt.Errorf("dumpxml: %v: %s", err, x)
					}
					if !bytes.Contains(x, []byte("<encryption format='luks'")) {
						return fmt.Errorf("the domain XML has no LUKS encryption on the disk:\n%s", x)
					}
					if err := noKeyIn("the domain XML", x); err != nil {
						return err
					}
					// A reboot from inside the guest.
					if err := agentOn(ha).reboot(ctx, 12*time.Minute); err != nil {
						return err
					}
					return readBack(ha, "after a guest reboot")
				},
			},
			{
				// Stopped; kvm-hostd restarts while libvirtd has lost the
				// (ephemeral) secrets, as after a libvirtd restart.
				Config: hcl("host-a", false),
			},
			{
				PreConfig: func() {
					h := c.Host("host-a")
					if err := h.Stop(); err != nil {
						t.Fatalf("stopping kvm-hostd: %v", err)
					}
					out, err := exec.Command("sh", "-c", "for u in $(virsh -c '"+ha.LocalURI+"' secret-list --uuid); do virsh -c '"+ha.LocalURI+"' secret-undefine $u; done").CombinedOutput()
					if err != nil {
						t.Fatalf("undefining libvirt secrets: %v: %s", err, out)
					}
					if err := h.Start(); err != nil {
						t.Fatalf("starting kvm-hostd: %v", err)
					}
					writeURL()
				},
				Config: hcl("host-a", true),
				Check: func(st *terraform.State) error {
					if id := st.RootModule().Resources["kvm_vm.enc"].Primary.ID; id != uuid {
						return fmt.Errorf("VM re-created (%s, was %s)", id, uuid)
					}
					if err := ready(ha); err != nil {
						return err
					}
					return readBack(ha, "after a kvm-hostd restart and a cold start")
				},
			},
			{
				// Live migration to host-b, which holds the same key.
				Config: hcl("host-b", true),
				Check: func(st *terraform.State) error {
					if id := st.RootModule().Resources["kvm_vm.enc"].Primary.ID; id != uuid {
						return fmt.Errorf("VM re-created (%s, was %s)", id, uuid)
					}
					t.Logf("migrated (test at %s)", time.Since(start).Round(time.Second))
					if err := ready(hb); err != nil {
						return err
					}
					if err := readBack(hb, "after a live migration"); err != nil {
						return err
					}
					enc, err := os.ReadFile(file(hb, "enc-secret"))
					if err != nil {
						return err
					}
					if bytes.Contains(enc, []byte(encMarker)) {
						return fmt.Errorf("the pattern is in host-b's encrypted file in clear")
					}
					if err := notInSharedFile(); err != nil {
						return err
					}
					if m, err := lastMigration(c.Host("host-a").Log(), "enc"); err != nil || m.SharedDisks != 1 || m.Disks != 3 {
						return fmt.Errorf("migration record %+v (%v): want 1 shared disk left in place and 3 local ones copied", m, err)
					}
					for _, name := range []string{"host-a", "host-b"} {
						if err := noKeyIn(name+"'s kvm-hostd log", []byte(c.Host(name).Log())); err != nil {
							return err
						}
					}
					var buf bytes.Buffer
					for _, r := range st.RootModule().Resources {
						fmt.Fprintf(&buf, "%v\n", r.Primary.Attributes)
					}
					return noKeyIn("the Terraform state", buf.Bytes())
				},
			},
		},
	})
	t.Logf("done in %s", time.Since(start).Round(time.Second))
}

// encThroughput logs dd throughput in the guest on the encrypted (vdb) and
// the plain (vdc) disk, side by side, past the pattern's first MiB. It is
// a measurement, not a check: under TCG the numbers say little about a
// KVM host with AES-NI.
func encThroughput(ctx context.Context, t *testing.T, g guestAgent) {
	rate := func(cmd string) float64 {
		out, err := g.run(ctx, "/bin/sh", "-c", cmd+" 2>&1 | tail -n 1")
		if err != nil {
			t.Logf("throughput: %s: %v", cmd, err)
			return 0
		}
		// "50331648 bytes (50 MB, 48 MiB) copied, 0.5 s, 100 MB/s"
		f := strings.Split(strings.TrimSpace(out), ",")
		var secs float64
		if len(f) >= 3 {
			_, _ = fmt.Sscanf(strings.TrimSpace(f[len(f)-2]), "%g s", &secs)
		}
		if secs <= 0 {
			t.Logf("throughput: unparsed dd output %q", out)
			return 0
		}
		return 48 / secs
	}
	var w, r [2]float64
	for i, dev := range []string{"/dev/vdb", "/dev/vdc"} {
		w[i] = rate("dd if=/dev/zero of=" + dev + " bs=1M seek=1 count=48 oflag=direct conv=fsync")
		r[i] = rate("dd if=" + dev + " of=/dev/null bs=1M skip=1 count=48 iflag=direct")
	}
	ratio := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	t.Logf("throughput in the guest (dd, 1 MiB direct I/O, 48 MiB): write encrypted %.1f MiB/s, plain %.1f MiB/s (ratio %.2f); "+
		"read encrypted %.1f MiB/s, plain %.1f MiB/s (ratio %.2f)", w[0], w[1], ratio(w[0], w[1]), r[0], r[1], ratio(r[0], r[1]))
}
