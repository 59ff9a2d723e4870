package kvm

import (
	"context"
	"encoding/json"
	"fmt"
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

// The rbd pool both namespace hosts define on the test Ceph, and the UUID of
// its ceph secret: the same on every host, as the domain XML names it.
const (
	rbdPoolName   = "kvmrbd"
	rbdSecretUUID = "3b0c5bb4-3a53-4c11-9a5e-0d6f0f8e7a10"
)

// rbdHCL is one guest booting from an RBD clone of the guest image
// (imported into the rbd pool from source_url) with an rbd data disk of
// dataMiB, plus a second, unattached clone of the image. Every disk
// follows the VM's host.
func rbdHCL(providerHCL, imageURL, host string, dataMiB int) string {
	return providerHCL + fmt.Sprintf(`
locals {
  host = %[1]q
}

resource "kvm_disk" "base" {
  name       = "rbd-base"
  host       = local.host
  pool       = %[2]q
  format     = "raw"
  source_url = %[3]q
}

resource "kvm_disk" "root" {
  name         = "rbd-root"
  host         = local.host
  pool         = %[2]q
  format       = "raw"
  base_disk_id = kvm_disk.base.id
}

resource "kvm_disk" "spare" {
  name         = "rbd-spare"
  host         = local.host
  pool         = %[2]q
  format       = "raw"
  base_disk_id = kvm_disk.base.id
}

resource "kvm_disk" "data" {
  name     = "rbd-data"
  host     = local.host
  pool     = %[2]q
  format   = "raw"
  size_mib = %[4]d
}

resource "kvm_vm" "rbd" {
  name             = "rbdvm"
  host             = local.host
  vcpu             = 1
  memory_mib       = 384
  shutdown_timeout = 120
  disks            = [{ disk_id = kvm_disk.root.id }, { disk_id = kvm_disk.data.id }]
  cloud_init       = { meta_data = "instance-id: rbdvm\nlocal-hostname: rbdvm\n" }
}
`, host, rbdPoolName, imageURL, dataMiB)
}

// startAgentMemcheck starts guestMemcheck (the real-guest test's memory
// workload) in the guest through its agent, detached.
func startAgentMemcheck(ctx context.Context, a guestAgent) error {
	if err := a.writeFile(ctx, "/tmp/memcheck.py", []byte(guestMemcheck)); err != nil {
		return err
	}
	_, err := a.run(ctx, "/bin/sh", "-c", "rm -f /tmp/memcheck.log; setsid nohup python3 /tmp/memcheck.py /tmp/memcheck.log </dev/null >/tmp/memcheck.out 2>&1 & "+
		"echo $! > /tmp/memcheck.pid; "+
		"for i in $(seq 100); do grep -q started /tmp/memcheck.log 2>/dev/null && exit 0; sleep 0.2; done; cat /tmp/memcheck.out; exit 1")
	return err
}

// agentMemcheckRounds returns the rounds the workload completed, and an
// error if it lost a write or no longer runs.
func agentMemcheckRounds(ctx context.Context, a guestAgent) (int, error) {
	out, err := a.run(ctx, "/bin/sh", "-c", "echo lost $(grep -c 'lost write' /tmp/memcheck.log); grep -m 3 'lost write' /tmp/memcheck.log; "+
		"tail -n 1 /tmp/memcheck.log; kill -0 $(cat /tmp/memcheck.pid) && echo running")
	if err != nil {
		return 0, fmt.Errorf("memcheck: %w", err)
	}
	rounds := 0
	for _, l := range strings.Split(out, "\n") {
		if n, ok := strings.CutPrefix(l, "lost "); ok && n != "0" {
			return 0, fmt.Errorf("the guest's memory lost writes during migration:\n%s", out)
		}
		if n, ok := strings.CutPrefix(l, "round "); ok {
			rounds, _ = strconv.Atoi(n)
		}
	}
	if !strings.HasSuffix(strings.TrimSpace(out), "running") {
		return rounds, fmt.Errorf("the guest's memcheck workload died: %s", out)
	}
	return rounds, nil
}

// rbdUsed is the space an rbd image's own objects take (rbd du).
func rbdUsed(rbd func(args ...string) (string, error), image string) (int64, error) {
	out, err := rbd("du", "--format", "json", image)
	if err != nil {
		return 0, err
	}
	// With its snapshots (a clone's base keeps its data in libvirt's).
	var du struct {
		Images []struct {
			Used int64 `json:"used_size"`
		} `json:"images"`
	}
	if err := json.Unmarshal([]byte(out), &du); err != nil || len(du.Images) == 0 {
		return 0, fmt.Errorf("rbd du %s: %v: %s", image, err, out)
	}
	var used int64
	for _, i := range du.Images {
		used += i.Used
	}
	return used, nil
}

// TestAccRBDReal proves rbd pools on a real one-node Ceph (memstore OSD,
// cephx) with ONE guest. Both namespace hosts define the same Ceph pool as
// libvirt rbd pool "kvmrbd" with its ceph secret, as an operator would, and
// serve it with --pool kvmrbd. The guest image is imported into the pool
// from source_url (qcow2 in, raw rbd image out); the guest boots from an RBD
// layered clone of it (rbd info shows the parent; a second clone is created
// in O(1) and holds no data), writes a marker, starts the real-guest test's
// memory workload and live-migrates host-a → host-b → host-a with a 64 MiB
// rbd data disk, then (grown online to 4 GiB, seen by the guest at once)
// host-a → host-b → host-a again: marker and workload intact after every
// move, no disk copied (libvirt's disk_total 0), and the move times with
// the small and the large data disk logged side by side.
func TestAccRBDReal(t *testing.T) {
	realstack.Require(t, "libvirtd", "virtlogd", "virsh", "nsenter", "ip", "qemu-system-x86_64", "ceph-mon", "ceph-osd", "ceph-mgr", "rbd")
	testAccPreCheck(t)
	parallelNSHostTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	start := time.Now()
	image, err := guestimage.Path(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hs := realstack.StartHostNamespaces(ctx, t, realstack.HostsOptions{Names: []string{"a", "b"}})
	ha, hb := hs.Host("a"), hs.Host("b")
	byHost := map[string]*realstack.NSHost{"host-a": ha, "host-b": hb}
	ceph := realstack.StartCephForTest(ctx, t, realstack.CephOptions{Addr: hostsGateway})
	cephUp := ceph.Started
	for _, h := range []*realstack.NSHost{ha, hb} {
		if err := h.DefineRBDPool(ctx, ceph, rbdPoolName, rbdSecretUUID); err != nil {
			t.Fatal(err)
		}
	}
	imageURL := serveGuestImage(t, image)
	// Each kvm-hostd keeps its record of rbd volumes in its host's
	// private /var/lib/libvirt, as separate machines would.
	c := startMigrationHosts(t, byHost, "/var/lib/libvirt/images/kvm-rbd-test",
		"--pool", rbdPoolName, "--state-dir", "/var/lib/libvirt/kvm-hostd-state")
	logOf := map[string]*harness.Host{}
	for _, h := range c.Hosts {
		logOf[h.Name] = h
	}
	hcl := func(host string, dataMiB int) string { return rbdHCL(c.ProviderHCL(), imageURL, host, dataMiB) }
	agentOn := func(h *realstack.NSHost) guestAgent { return guestAgent{h: h, domain: "rbdvm", logf: t.Logf} }
	rbd := func(args ...string) (string, error) { return ceph.Tool(ctx, "rbd", args...) }
	marker := fmt.Sprintf("rbd-marker-%d", time.Now().UnixNano())
	var uuid string
	var timings []string
	rounds := 0

	moved := func(from, to string, dataMiB int) resource.TestCheckFunc {
		return func(st *terraform.State) error {
			if id := st.RootModule().Resources["kvm_vm.rbd"].Primary.ID; id != uuid {
				return fmt.Errorf("VM id %s, was %s: re-created", id, uuid)
			}
			a := agentOn(byHost[to])
			out, err := a.run(ctx, "/bin/cat", "/root/kvm-marker")
			if err != nil {
				return fmt.Errorf("reading the marker on %s: %w\n%s", to, err, guestConsole(byHost[to], "rbdvm"))
			}
			if strings.TrimSpace(out) != marker {
				return fmt.Errorf("marker on %s is %q, want %q", to, out, marker)
			}
			r, err := agentMemcheckRounds(ctx, a)
			if err != nil {
				return err
			}
			if r <= rounds {
				return fmt.Errorf("the memory workload made no progress (round %d, was %d)", r, rounds)
			}
			rounds = r
			g, err := lastMigration(logOf[from].Log(), "rbdvm")
			if err != nil {
				return err
			}
			if g.SharedDisks != 2 || g.Disks != 0 || g.DiskTotalBytes != 0 {
				return fmt.Errorf("migration %s → %s: %d shared, %d copied disks, %d disk bytes; want 2 shared, nothing copied", from, to, g.SharedDisks, g.Disks, g.DiskTotalBytes)
			}
			timings = append(timings, fmt.Sprintf("%s→%s with a %d MiB rbd data disk: %s", from, to, dataMiB, g.Took))
			t.Logf("migrated %s → %s with a %d MiB rbd data disk in %s, no disk copied; marker and memory workload intact (round %d; test at %s)",
				from, to, dataMiB, g.Took, r, time.Since(start).Round(time.Second))
			return nil
		}
	}

	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config: hcl("host-a", 64),
				Check: func(st *terraform.State) error {
					uuid = st.RootModule().Resources["kvm_vm.rbd"].Primary.ID
					// Everything of the guest is in Ceph: the image as a
					// raw rbd image, the disks as RBD clones of it.
					for _, clone := range []string{"rbd-root", "rbd-spare"} {
						info, err := rbd("info", ceph.Pool+"/"+clone)
						if err != nil {
							return err
						}
						if !strings.Contains(info, "parent: "+ceph.Pool+"/rbd-base@") {
							return fmt.Errorf("%s is not an RBD clone of rbd-base:\n%s", clone, info)
						}
					}
					// O(1): the unattached clone holds no data of its
					// own, whatever the size of its base.
					base, err := rbdUsed(rbd, ceph.Pool+"/rbd-base")
					if err != nil {
						return err
					}
					spare, err := rbdUsed(rbd, ceph.Pool+"/rbd-spare")
					if err != nil {
						return err
					}
					if spare != 0 || base == 0 {
						return fmt.Errorf("the clone rbd-spare holds %d bytes of its own (base: %d); want 0", spare, base)
					}
					t.Logf("rbd du: the imported base uses %d MiB, its unattached RBD clone 0 bytes", base>>20)
					t0 := time.Now()
					if err := agentOn(ha).waitReady(ctx, 12*time.Minute); err != nil {
						return fmt.Errorf("%w\n%s", err, guestConsole(ha, "rbdvm"))
					}
					t.Logf("guest agent answers after %s (test at %s)", time.Since(t0).Round(time.Second), time.Since(start).Round(time.Second))
					if _, err := agentOn(ha).run(ctx, "/bin/sh", "-c", "echo "+marker+" > /root/kvm-marker && sync"); err != nil {
						return err
					}
					if err := startAgentMemcheck(ctx, agentOn(ha)); err != nil {
						return err
					}
					return nil
				},
			},
			{
				// Refused at plan time, before any apply: a snapshot
				// would miss the rbd disks, a qcow2 cannot be an rbd
				// volume.
				Config: hcl("host-a", 64) + `
resource "kvm_snapshot" "s" {
  vm_id          = kvm_vm.rbd.id
  name           = "s1"
  include_memory = true
}
resource "kvm_disk" "q" {
  name     = "rbd-qcow2"
  host     = local.host
  pool     = "` + rbdPoolName + `"
  size_mib = 64
}
`,
				PlanOnly:    true,
				ExpectError: regexp.MustCompile(`(?s)(Snapshot of a VM With rbd Disks.*Disk Format on an rbd Pool|Disk Format on an rbd Pool.*Snapshot of a VM With rbd Disks)`),
			},
			{Config: hcl("host-b", 64), Check: moved("host-a", "host-b", 64)},
			{Config: hcl("host-a", 64), Check: moved("host-b", "host-a", 64)},
			{
				// Grown online, no restart: the guest sees it at once.
				Config: hcl("host-a", 4096),
				Check: func(st *terraform.State) error {
					if id := st.RootModule().Resources["kvm_vm.rbd"].Primary.ID; id != uuid {
						return fmt.Errorf("VM id %s, was %s: re-created", id, uuid)
					}
					out, err := agentOn(ha).run(ctx, "/bin/cat", "/sys/block/vdb/size")
					if err != nil {
						return err
					}
					if strings.TrimSpace(out) != strconv.Itoa(4096*2048) {
						return fmt.Errorf("the guest sees its data disk at %s sectors, want %d (4 GiB)", strings.TrimSpace(out), 4096*2048)
					}
					info, err := rbd("info", ceph.Pool+"/rbd-data")
					if err != nil || !strings.Contains(info, "size 4 GiB") {
						return fmt.Errorf("rbd-data after the online grow: %v\n%s", err, info)
					}
					return nil
				},
			},
			{Config: hcl("host-b", 4096), Check: func(st *terraform.State) error {
				t.Logf("ceph daemons' resident memory (MiB) with the guest running: %v", ceph.MemoryRSS())
				return moved("host-a", "host-b", 4096)(st)
			}},
			{Config: hcl("host-a", 4096), Check: moved("host-b", "host-a", 4096)},
		},
	})
	t.Logf("ceph daemons' resident memory (MiB) after the test: %v", ceph.MemoryRSS())
	if out, err := rbd("ls", ceph.Pool); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("rbd images left after destroy: %q %v", out, err)
	}
	t.Logf("ceph started in %s; the test took %s", cephUp.Round(100*time.Millisecond), time.Since(start).Round(time.Second))
	for _, s := range timings {
		t.Log(s)
	}
}
