package kvm

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/terraform"

	"github.com/kvmfleet/terraform-provider-kvm/internal/guestimage"
	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

// encBenchMiB is how much each dd of the encryption benchmark moves.
const encBenchMiB = 128

// TestEncryptionThroughputBench is `make bench`'s encryption benchmark
// (scripts/bench-encryption.sh), not a test: it runs only with
// KVM_BENCH_ENCRYPTION=1, on the real stack. One guest with an encrypted
// (LUKS qcow2, vdb) and a plain (qcow2, vdc) data disk of the same size
// on the same pool runs dd with direct I/O, 1 MiB blocks, on each,
// alternating which disk goes first, for KVM_BENCH_ENCRYPTION_ROUNDS
// rounds (default 5); it reports each disk's median write and read
// throughput, their spread (min–max), and the encrypted/plain ratio of
// the medians, as a markdown table written to KVM_BENCH_ENCRYPTION_OUT.
func TestEncryptionThroughputBench(t *testing.T) {
	if os.Getenv("KVM_BENCH_ENCRYPTION") != "1" {
		t.Skip("a benchmark: run by scripts/bench-encryption.sh (KVM_BENCH_ENCRYPTION=1)")
	}
	realstack.Require(t, "libvirtd", "virtlogd", "virsh", "nsenter", "ip", "qemu-system-x86_64")
	testAccPreCheck(t)
	rounds := 5
	if r := os.Getenv("KVM_BENCH_ENCRYPTION_ROUNDS"); r != "" {
		if _, err := fmt.Sscan(r, &rounds); err != nil || rounds < 1 {
			t.Fatalf("KVM_BENCH_ENCRYPTION_ROUNDS=%q", r)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	image, err := guestimage.Path(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hs := realstack.StartHostNamespaces(ctx, t, realstack.HostsOptions{Names: []string{"a"}})
	ha := hs.Host("a")
	imageURL := serveGuestImage(t, image)
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	keyDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(keyDir, "bench.key"), key, 0o600); err != nil {
		t.Fatal(err)
	}
	c := startMigrationHosts(t, map[string]*realstack.NSHost{"host-a": ha}, "/var/lib/libvirt/images/kvm-encbench", "--key-dir", keyDir)
	hcl := c.ProviderHCL() + fmt.Sprintf(`
resource "kvm_disk" "base" {
  name       = "encbench-base"
  host       = "host-a"
  source_url = %q
}

resource "kvm_disk" "root" {
  name         = "encbench-root"
  host         = "host-a"
  base_disk_id = kvm_disk.base.id
}

resource "kvm_disk" "enc" {
  name       = "encbench-enc"
  host       = "host-a"
  size_mib   = %[2]d
  encryption = { key = "bench" }
}

resource "kvm_disk" "plain" {
  name     = "encbench-plain"
  host     = "host-a"
  size_mib = %[2]d
  format   = "qcow2"
}

resource "kvm_vm" "b" {
  name       = "encbench"
  host       = "host-a"
  vcpu       = 1
  memory_mib = 384
  disks      = [{ disk_id = kvm_disk.root.id }, { disk_id = kvm_disk.enc.id }, { disk_id = kvm_disk.plain.id }]
  cloud_init = { meta_data = "instance-id: encbench\nlocal-hostname: encbench\n" }
}
`, imageURL, encBenchMiB+16)
	g := guestAgent{h: ha, domain: "encbench", logf: t.Logf}
	var table string
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{{
			Config: hcl,
			Check: func(*terraform.State) error {
				if err := g.waitReady(ctx, 12*time.Minute); err != nil {
					return fmt.Errorf("%w\n%s", err, guestConsole(ha, "encbench"))
				}
				var err error
				table, err = encBench(ctx, g, ha, rounds)
				return err
			},
		}},
	})
	t.Log("\n" + table)
	if out := os.Getenv("KVM_BENCH_ENCRYPTION_OUT"); out != "" && table != "" {
		if err := os.WriteFile(out, []byte(table), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// encBench runs the rounds and formats the table.
func encBench(ctx context.Context, g guestAgent, h *realstack.NSHost, rounds int) (string, error) {
	devs := map[string]string{"encrypted": "/dev/vdb", "plain": "/dev/vdc"}
	cmds := map[string]string{
		"write": "dd if=/dev/zero of=%s bs=1M count=%d oflag=direct conv=fsync",
		"read":  "dd if=%s of=/dev/null bs=1M count=%d iflag=direct",
	}
	// Fill both disks once, so reads read allocated clusters and writes
	// overwrite them: the first write into a fresh qcow2 also allocates.
	for _, dev := range devs {
		if _, err := g.run(ctx, "/bin/sh", "-c", fmt.Sprintf(cmds["write"], dev, encBenchMiB)); err != nil {
			return "", err
		}
	}
	rates := map[string][]float64{} // "write encrypted" → MiB/s per round
	for r := range rounds {
		order := []string{"encrypted", "plain"}
		if r%2 == 1 {
			order = []string{"plain", "encrypted"}
		}
		for _, op := range []string{"write", "read"} {
			for _, disk := range order {
				cmd := fmt.Sprintf(cmds[op], devs[disk], encBenchMiB)
				out, err := g.run(ctx, "/bin/sh", "-c", cmd+" 2>&1 | tail -n 1")
				if err != nil {
					return "", err
				}
				secs := ddSeconds(out)
				if secs <= 0 {
					return "", fmt.Errorf("unparsed dd output %q", out)
				}
				rates[op+" "+disk] = append(rates[op+" "+disk], encBenchMiB/secs)
			}
		}
	}
	accel := "TCG (no KVM)"
	if out, err := exec.Command("virsh", "-c", h.LocalURI, "dumpxml", "encbench").CombinedOutput(); err == nil && strings.Contains(string(out), "type='kvm'") {
		accel = "KVM"
	}
	aes := "without"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil && strings.Contains(string(b), " aes") {
		aes = "with"
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "Disk encryption throughput in the guest (dd, 1 MiB blocks, direct I/O, %d MiB, %d rounds, median [min–max]); "+
		"LUKS qcow2 (AES-XTS) vs plain qcow2 on the same pool; guest under %s, host CPU %s AES-NI:\n\n", encBenchMiB, rounds, accel, aes)
	sb.WriteString("| | encrypted | plain | encrypted / plain |\n|---|---|---|---|\n")
	for _, op := range []string{"write", "read"} {
		e, p := rates[op+" encrypted"], rates[op+" plain"]
		fmt.Fprintf(&sb, "| %s | %s | %s | %.2f |\n", op, fmtRates(e), fmtRates(p), median(e)/median(p))
	}
	return sb.String(), nil
}

// ddSeconds parses the seconds from dd's last line,
// "134217728 bytes (134 MB, 128 MiB) copied, 1.5 s, 89 MB/s".
func ddSeconds(out string) float64 {
	f := strings.Split(strings.TrimSpace(out), ",")
	var secs float64
	if len(f) >= 3 {
		_, _ = fmt.Sscanf(strings.TrimSpace(f[len(f)-2]), "%g s", &secs)
	}
	return secs
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func fmtRates(v []float64) string {
	if len(v) == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.1f MiB/s [%.1f–%.1f]", median(v), slices.Min(v), slices.Max(v))
}
