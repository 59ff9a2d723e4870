package kvm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/terraform"

	"github.com/kvmfleet/terraform-provider-kvm/internal/guestimage"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

// sharedPoolDir stands in for an NFS mount: one directory both namespace
// hosts see at the same path (it is outside their private /var/lib/libvirt).
const (
	sharedPoolDir  = "/var/tmp/kvm-shared-pool-test"
	sharedPoolName = "kvmshared"
)

// plainFillMiB is how much data the local-disk VM's disk holds (all of it),
// at plainDiskPath (in the default pool of each host).
const (
	plainFillMiB  = 256
	plainDiskPath = "/var/lib/libvirt/images/kvm-pools-test/pools-plain"
)

// poolsHCL is one guest booting from a linked clone in the shared pool,
// with a shared data disk of dataMiB, plus a guest-less VM ("plain") with
// one local disk in the default pool, whose migration must copy it. Every
// disk follows its VM's host.
func poolsHCL(providerHCL, imageURL, host string, dataMiB int) string {
	return providerHCL + fmt.Sprintf(`
locals {
  host = %[1]q
}

resource "kvm_disk" "base" {
  name       = "pools-base"
  host       = local.host
  pool       = %[2]q
  format     = "qcow2"
  source_url = %[3]q
}

resource "kvm_disk" "root" {
  name         = "pools-root"
  host         = local.host
  pool         = %[2]q
  base_disk_id = kvm_disk.base.id
}

resource "kvm_disk" "data" {
  name     = "pools-data"
  host     = local.host
  pool     = %[2]q
  size_mib = %[4]d
}

resource "kvm_vm" "pools" {
  name             = "pools"
  host             = local.host
  vcpu             = 1
  memory_mib       = 384
  shutdown_timeout = 120
  disks            = [{ disk_id = kvm_disk.root.id }, { disk_id = kvm_disk.data.id }]
  cloud_init       = { meta_data = "instance-id: pools\nlocal-hostname: pools\n" }
}

resource "kvm_disk" "plain" {
  name     = "pools-plain"
  host     = local.host
  size_mib = 256
}

resource "kvm_vm" "plain" {
  name       = "plain"
  host       = local.host
  vcpu       = 1
  memory_mib = 64
  disks      = [{ disk_id = kvm_disk.plain.id }]
}
`, host, sharedPoolName, imageURL, dataMiB)
}

// migrationRecord is one "domain migrated" line of a kvm-hostd log.
type migrationRecord struct {
	Name           string
	Disks          int
	SharedDisks    int
	DiskTotalBytes uint64
	Took           string
}

// logField matches key=value pairs of kvm-hostd's text log.
var logField = regexp.MustCompile(`(\w+)=("(?:[^"\\]|\\.)*"|\S+)`)

// lastMigration returns the last "domain migrated" record for vm in a
// kvm-hostd log (text format: key=value).
func lastMigration(log, vm string) (migrationRecord, error) {
	var out migrationRecord
	found := false
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, `msg="domain migrated"`) {
			continue
		}
		f := map[string]string{}
		for _, m := range logField.FindAllStringSubmatch(line, -1) {
			f[m[1]] = strings.Trim(m[2], `"`)
		}
		if f["name"] != vm {
			continue
		}
		out = migrationRecord{Name: vm, Took: f["took"]}
		out.Disks, _ = strconv.Atoi(f["disks"])
		out.SharedDisks, _ = strconv.Atoi(f["shared_disks"])
		out.DiskTotalBytes, _ = strconv.ParseUint(f["disk_total_bytes"], 10, 64)
		if d, err := time.ParseDuration(out.Took); err == nil {
			out.Took = d.Round(time.Millisecond).String()
		}
		found = true
	}
	if !found {
		return out, fmt.Errorf("no migration of %s in the log", vm)
	}
	return out, nil
}

// TestAccSharedPoolReal proves copy-free live migration on ONE guest. Both
// namespace hosts define one directory (the same path, standing in for an
// NFS mount) as libvirt dir pool "kvmshared", as an operator would, and
// serve it with --pool kvmshared --shared-pool kvmshared. The guest boots
// from a linked clone in it (image downloaded once), writes a marker, and
// live-migrates host-a → host-b → host-a with a 64 MiB shared data disk,
// then (grown online to 4 GiB) host-a → host-b → host-a again: the marker
// is intact after each move, the source kvm-hostd's log shows no storage
// copy (libvirt's disk_total 0) and the data disk's size does not change
// the time. A guest-less VM with a local disk, moved alongside, copies it:
// the disk holds plainFillMiB of real data (written through its running
// QEMU), so the log sets the copy's time and bytes against the shared
// moves.
func TestAccSharedPoolReal(t *testing.T) {
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
	_ = os.RemoveAll(sharedPoolDir)
	if err := os.MkdirAll(sharedPoolDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sharedPoolDir) })
	hs := realstack.StartHostNamespaces(ctx, t, realstack.HostsOptions{Names: []string{"a", "b"}})
	ha, hb := hs.Host("a"), hs.Host("b")
	byHost := map[string]*realstack.NSHost{"host-a": ha, "host-b": hb}
	for _, h := range []*realstack.NSHost{ha, hb} {
		for _, args := range [][]string{
			{"pool-define-as", sharedPoolName, "dir", "--target", sharedPoolDir},
			{"pool-start", sharedPoolName},
		} {
			if out, err := exec.Command("virsh", append([]string{"-c", h.LocalURI}, args...)...).CombinedOutput(); err != nil {
				t.Fatalf("virsh %v on %s: %v\n%s", args, h.Name, err, out)
			}
		}
	}

	imageURL := serveGuestImage(t, image)

	c := startMigrationHosts(t, byHost, "/var/lib/libvirt/images/kvm-pools-test", "--pool", sharedPoolName, "--shared-pool", sharedPoolName)
	logOf := map[string]*harness.Host{}
	for _, h := range c.Hosts {
		logOf[h.Name] = h
	}
	hcl := func(host string, dataMiB int) string { return poolsHCL(c.ProviderHCL(), imageURL, host, dataMiB) }
	agentOn := func(h *realstack.NSHost) guestAgent { return guestAgent{h: h, domain: "pools", logf: t.Logf} }
	marker := fmt.Sprintf("shared-pool-marker-%d", time.Now().UnixNano())
	var uuid string
	var timings []string

	// moved checks the guest on host `to` after a move from `from`.
	moved := func(from, to string, dataMiB int) resource.TestCheckFunc {
		return func(st *terraform.State) error {
			if id := st.RootModule().Resources["kvm_vm.pools"].Primary.ID; id != uuid {
				return fmt.Errorf("VM id %s, was %s: re-created", id, uuid)
			}
			h := byHost[to]
			out, err := agentOn(h).run(ctx, "/bin/cat", "/root/kvm-marker")
			if err != nil {
				return fmt.Errorf("reading the marker on %s: %w\n%s", to, err, guestConsole(h, "pools"))
			}
			if strings.TrimSpace(out) != marker {
				return fmt.Errorf("marker on %s is %q, want %q", to, out, marker)
			}
			log := logOf[from].Log()
			g, err := lastMigration(log, "pools")
			if err != nil {
				return err
			}
			if g.SharedDisks != 2 || g.Disks != 0 || g.DiskTotalBytes != 0 {
				return fmt.Errorf("guest migration %s → %s: %d shared, %d copied disks, %d disk bytes; want 2 shared, nothing copied", from, to, g.SharedDisks, g.Disks, g.DiskTotalBytes)
			}
			p, err := lastMigration(log, "plain")
			if err != nil {
				return err
			}
			// disk_total_bytes is what libvirt's job reported while
			// kvm-hostd polled it (4 times a second); logged, not required.
			if p.Disks != 1 || p.SharedDisks != 0 {
				return fmt.Errorf("local-disk migration %s → %s: %d copied, %d shared disks, %d disk bytes; want its one local disk copied", from, to, p.Disks, p.SharedDisks, p.DiskTotalBytes)
			}
			// What the copy wrote on the target: the file's allocation.
			onTarget, _ := allocatedMiB(byHost[to], plainDiskPath)
			rate := ""
			if d, err := time.ParseDuration(p.Took); err == nil && d > 0 {
				rate = fmt.Sprintf(", %.0f MiB/s", float64(plainFillMiB)/d.Seconds())
			}
			timings = append(timings, fmt.Sprintf("%s→%s shared data disk %d MiB: %s (disk bytes copied 0); local disk VM with %d MiB of data: %s%s (libvirt disk bytes %d, %d MiB allocated on the target)",
				from, to, dataMiB, g.Took, plainFillMiB, p.Took, rate, p.DiskTotalBytes, onTarget))
			t.Logf("migrated %s → %s with a %d MiB shared data disk in %s, no disk copied; the local-disk VM (%d MiB of data) moved in %s, libvirt counted %d disk bytes, %d MiB allocated on the target (test at %s)",
				from, to, dataMiB, g.Took, plainFillMiB, p.Took, p.DiskTotalBytes, onTarget, time.Since(start).Round(time.Second))
			return nil
		}
	}

	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config: hcl("host-a", 64),
				Check: func(st *terraform.State) error {
					uuid = st.RootModule().Resources["kvm_vm.pools"].Primary.ID
					t0 := time.Now()
					if err := agentOn(ha).waitReady(ctx, 12*time.Minute); err != nil {
						return fmt.Errorf("%w\n%s", err, guestConsole(ha, "pools"))
					}
					t.Logf("guest agent answers after %s (test at %s)", time.Since(t0).Round(time.Second), time.Since(start).Round(time.Second))
					if _, err := agentOn(ha).run(ctx, "/bin/sh", "-c", "echo "+marker+" > /root/kvm-marker && sync"); err != nil {
						return err
					}
					// Real data on the local-disk VM's disk, written through its
					// running QEMU (HMP qemu-io), so its moves copy it.
					// The device's own BlockBackend (see migrateTestDiskIO);
					// qemu-io answers in the domain's log, so the file's
					// allocation proves the write.
					t1 := time.Now()
					for off := 0; off < plainFillMiB; off += 32 {
						cmd := fmt.Sprintf(`qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend "write -P 0x5a %dM 32M"`, off)
						out, err := exec.Command("virsh", "-c", ha.LocalURI, "qemu-monitor-command", "plain", "--hmp", cmd).CombinedOutput()
						if err != nil || strings.Contains(string(out), "rror") {
							return fmt.Errorf("filling the local disk (%s): %v: %s", cmd, err, out)
						}
					}
					if got, err := allocatedMiB(ha, plainDiskPath); err != nil || got < plainFillMiB {
						return fmt.Errorf("the local disk holds %d MiB (%v) after writing %d MiB into it", got, err, plainFillMiB)
					}
					t.Logf("wrote %d MiB into the local-disk VM's disk in %s", plainFillMiB, time.Since(t1).Round(time.Millisecond))
					// Everything of the guest is in the shared directory.
					for _, f := range []string{"pools-base", "pools-root", "pools-data"} {
						if _, err := os.Stat(sharedPoolDir + "/" + f); err != nil {
							return fmt.Errorf("not in the shared pool: %w", err)
						}
					}
					return nil
				},
			},
			{Config: hcl("host-b", 64), Check: moved("host-a", "host-b", 64)},
			{Config: hcl("host-a", 64), Check: moved("host-b", "host-a", 64)},
			{Config: hcl("host-a", 4096)}, // grown online, no restart
			{Config: hcl("host-b", 4096), Check: moved("host-a", "host-b", 4096)},
			{Config: hcl("host-a", 4096), Check: moved("host-b", "host-a", 4096)},
		},
	})
	for _, s := range timings {
		t.Log(s)
	}
}
