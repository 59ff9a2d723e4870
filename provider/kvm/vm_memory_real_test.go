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
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"

	"github.com/kvmfleet/terraform-provider-kvm/internal/guestimage"
	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

// The database VM of the real memory-layout test: two NUMA cells of
// memRealCellMiB each, all of it from 2 MiB huge pages.
const (
	memRealCellMiB = 256
	memRealPages   = 2 * memRealCellMiB / 2
	// memRealSpare is what the test reserves beyond the VM: fewer pages
	// than the second, refused VM asks for.
	memRealSpare = 8
)

func memRealHCL(providerHCL, imageURL, emulator, extra string) string {
	return providerHCL + fmt.Sprintf(`
resource "kvm_disk" "base" {
  name       = "numa-base"
  host       = "host-a"
  format     = "qcow2"
  source_url = %q
}

resource "kvm_disk" "root" {
  name         = "numa-root"
  host         = "host-a"
  base_disk_id = kvm_disk.base.id
}

resource "kvm_vm" "db" {
  name             = "numa-db"
  host             = "host-a"
  vcpu             = 2
  memory_mib       = %d
  hugepages        = true
  shutdown_timeout = 0
  numa = [
    { cpus = "0", memory_mib = %d, host_nodes = "0" },
    { cpus = "1", memory_mib = %d, host_nodes = "0" },
  ]
  cpu = {
    pinning          = ["0", "1"]
    emulator_pinning = %q
  }
  disks = [{ disk_id = kvm_disk.root.id }]
  cloud_init = {
    user_data = "#cloud-config\n"
    meta_data = "instance-id: numa-db\nlocal-hostname: numa-db\n"
  }
}
%s`, imageURL, 2*memRealCellMiB, memRealCellMiB, memRealCellMiB, emulator, extra)
}

// memRealHugepages reads the kernel's 2 MiB huge page counters: the pool,
// and what is free of it less what mappings have reserved (QEMU maps the
// whole guest at start; pages it has not touched yet still count as
// HugePages_Free but are HugePages_Rsvd, taken).
func memRealHugepages(t *testing.T) (total, free int64) {
	t.Helper()
	read := func(name string) int64 {
		b, err := os.ReadFile("/sys/kernel/mm/hugepages/hugepages-2048kB/" + name)
		if err != nil {
			t.Fatalf("huge pages: %v", err)
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		return n
	}
	return read("nr_hugepages"), read("free_hugepages") - read("resv_hugepages")
}

// memRealReserve reserves n more 2 MiB huge pages for the test and mounts
// hugetlbfs at /dev/hugepages where nothing is mounted, before the host's
// libvirtd starts (it finds hugetlbfs mounts when it starts, and its
// mount namespace is a copy of this one). Both are undone in cleanup.
func memRealReserve(t *testing.T, n int64) {
	t.Helper()
	if _, err := os.Stat("/sys/kernel/mm/hugepages/hugepages-2048kB"); err != nil {
		t.Skipf("this kernel has no 2 MiB huge pages: %v", err)
	}
	orig, _ := memRealHugepages(t)
	const knob = "/proc/sys/vm/nr_hugepages"
	if err := os.WriteFile(knob, []byte(strconv.FormatInt(orig+n, 10)), 0o644); err != nil {
		t.Skipf("cannot reserve huge pages here (%s is not writable: %v); the environment forbids it", knob, err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(knob, []byte(strconv.FormatInt(orig, 10)), 0o644); err != nil {
			t.Errorf("restoring %s to %d: %v", knob, orig, err)
		}
	})
	if got, _ := memRealHugepages(t); got < orig+n {
		t.Fatalf("asked the kernel for %d huge pages of 2 MiB, it reserved %d: host memory is too fragmented or too small for the test (free some memory or echo 3 > /proc/sys/vm/drop_caches and retry)", orig+n, got)
	}
	mounts, err := os.ReadFile("/proc/mounts")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^\S+ \S+ hugetlbfs `).Match(mounts) {
		if err := os.MkdirAll("/dev/hugepages", 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("mount", "-t", "hugetlbfs", "hugetlbfs", "/dev/hugepages").CombinedOutput(); err != nil {
			t.Fatalf("mount hugetlbfs at /dev/hugepages: %v: %s", err, out)
		}
		t.Cleanup(func() {
			if out, err := exec.Command("umount", "/dev/hugepages").CombinedOutput(); err != nil {
				t.Errorf("umount /dev/hugepages: %v: %s", err, out)
			}
		})
	}
}

// TestAccVMMemoryLayoutReal boots one guest with two NUMA cells, huge
// pages, vCPU and emulator pinning on real QEMU: the guest sees its two
// nodes, the host's free huge pages drop by the VM's size, the emulator
// threads move to another CPU live (same QEMU), and a second hugepage VM
// that does not fit is refused with the page counts.
func TestAccVMMemoryLayoutReal(t *testing.T) {
	realstack.Require(t, "libvirtd", "virtlogd", "virsh", "nsenter", "ip", "qemu-system-x86_64", "taskset",
		"ovs-vsctl", "ovs-ofctl", "ovsdb-server", "ovs-vswitchd")
	testAccPreCheck(t)
	parallelNSHostTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	start := time.Now()

	image, err := guestimage.Path(ctx)
	if err != nil {
		t.Fatal(err)
	}
	memRealReserve(t, memRealPages+memRealSpare)
	_, freeBefore := memRealHugepages(t)

	hs := realstack.StartHostNamespaces(ctx, t, realstack.HostsOptions{Names: []string{"m"}, OVS: true})
	h := hs.Host("m")
	imageURL := serveGuestImage(t, image)
	c := startNSHostd(t, h, "/var/lib/libvirt/images/kvm-numa-test")
	cl := testAccVMClient(t, c, "host-a")
	agent := guestAgent{h: h, domain: "numa-db", logf: t.Logf}
	virsh := func(args ...string) (string, error) {
		out, err := h.Command("virsh", append([]string{"-c", "qemu:///system"}, args...)...).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	qemuPID := func() (string, error) {
		out, err := h.Command("cat", "/run/libvirt/qemu/numa-db.pid").CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	// emulatorOn checks libvirt's live emulator pinning and the QEMU
	// process's own affinity (its main thread is an emulator thread).
	emulatorOn := func(pid, cpus string) error {
		out, err := virsh("emulatorpin", "numa-db", "--live")
		if err != nil || !regexp.MustCompile(`\*:\s+`+cpus+`\s*$`).MatchString(out) {
			return fmt.Errorf("virsh emulatorpin: %v: %q, want %s", err, out, cpus)
		}
		ts, err := h.Command("taskset", "-cp", pid).CombinedOutput()
		if err != nil || !strings.HasSuffix(strings.TrimSpace(string(ts)), "affinity list: "+cpus) {
			return fmt.Errorf("taskset -cp %s: %v: %q, want %s", pid, err, ts, cpus)
		}
		return nil
	}
	var pid string

	checkBooted := func(*terraform.State) error {
		t.Logf("numa-db defined and started after %s", time.Since(start).Round(time.Second))
		// Huge pages: the whole guest is preallocated from them.
		_, free := memRealHugepages(t)
		if freeBefore-free < memRealPages {
			return fmt.Errorf("HugePages_Free-HugePages_Rsvd went from %d to %d while the VM runs; want a drop of at least %d (the VM's %d MiB)",
				freeBefore, free, memRealPages, 2*memRealCellMiB)
		}
		t.Logf("HugePages_Free-HugePages_Rsvd %d -> %d with the VM running (%d pages of 2 MiB)", freeBefore, free, freeBefore-free)
		inv, err := cl.Host(ctx)
		if err != nil {
			return err
		}
		if inv.Hugepages == nil || inv.Hugepages.SizeKiB != 2048 || inv.Hugepages.Free > free {
			return fmt.Errorf("/v1/host hugepages %+v, kernel free %d", inv.Hugepages, free)
		}
		if pid, err = qemuPID(); err != nil {
			return fmt.Errorf("QEMU pid: %v: %s", err, pid)
		}
		if err := emulatorOn(pid, "0"); err != nil {
			return err
		}
		// The guest's view: two NUMA nodes with half the memory each.
		if err := agent.waitReady(ctx, 12*time.Minute); err != nil {
			return fmt.Errorf("%w\n%s", err, guestConsole(h, "numa-db"))
		}
		t.Logf("guest agent up after %s", time.Since(start).Round(time.Second))
		out, err := agent.run(ctx, "/bin/sh", "-c", "for n in /sys/devices/system/node/node*; do echo \"$n $(grep MemTotal $n/meminfo | awk '{print $4}') $(cat $n/cpulist)\"; done")
		if err != nil {
			return err
		}
		t.Logf("guest NUMA nodes:\n%s", out)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 2 {
			return fmt.Errorf("the guest sees %d NUMA nodes, want 2:\n%s", len(lines), out)
		}
		for i, l := range lines {
			f := strings.Fields(l)
			kib, _ := strconv.ParseInt(f[1], 10, 64)
			// The node's MemTotal is its memory less what the kernel
			// keeps for itself: within 25% of the cell.
			if kib > memRealCellMiB*1024 || kib < memRealCellMiB*1024*3/4 || f[2] != strconv.Itoa(i) {
				return fmt.Errorf("guest node %d: %s; want about %d MiB and CPU %d", i, l, memRealCellMiB, i)
			}
		}
		return nil
	}
	checkRepinned := func(*terraform.State) error {
		now, err := qemuPID()
		if err != nil || now != pid {
			return fmt.Errorf("QEMU pid is %q (%v), was %s: the VM restarted for an emulator pinning change", now, err, pid)
		}
		return emulatorOn(pid, "1")
	}

	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config: memRealHCL(c.ProviderHCL(), imageURL, "0", ""),
				Check:  checkBooted,
			},
			{
				Config: memRealHCL(c.ProviderHCL(), imageURL, "1", ""),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_vm.db", plancheck.ResourceActionUpdate),
					plancheck.ExpectKnownValue("kvm_vm.db", tfjsonpath.New("state"), knownvalue.StringExact("running")),
				}},
				Check: checkRepinned,
			},
			{
				// memRealSpare pages are left; this VM needs 32.
				Config: memRealHCL(c.ProviderHCL(), imageURL, "1", `
resource "kvm_vm" "big" {
  name       = "numa-big"
  host       = "host-a"
  vcpu       = 1
  memory_mib = 64
  hugepages  = true
}
`),
				ExpectError: regexp.MustCompile(`(?s)too\s+few\s+free\s+huge\s+pages.*needs\s+32\s+pages\s+of\s+2048\s+KiB,\s+` + strconv.Itoa(memRealSpare) + `\s+free`),
			},
		},
	})
	// Destroyed: the pages are back.
	if _, free := memRealHugepages(t); free != freeBefore {
		t.Errorf("HugePages_Free-HugePages_Rsvd is %d after the VM was destroyed, was %d before", free, freeBefore)
	}
	t.Logf("total %s", time.Since(start).Round(time.Second))
}
