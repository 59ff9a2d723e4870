package kvm

import (
	"context"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

// TestAccFleetReal_maintenanceDrain is issue 17's maintenance drain on the
// real stack: two namespace hosts (own libvirtd each, non-shared storage)
// hold one small VM each, on a tiny local disk that boots nothing (so it
// migrates in seconds); host-a goes into maintenance, the plan moves its key
// with reason maintenance as in-place updates, and the apply live-migrates
// the VM and its disk to host-b, keeping its UUID. The next plan is empty.
func TestAccFleetReal_maintenanceDrain(t *testing.T) {
	realstack.Require(t, "libvirtd", "virtlogd", "nsenter", "ip", "qemu-system-x86_64")
	testAccPreCheck(t)
	parallelNSHostTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	t0 := time.Now()
	hs := realstack.StartHostNamespaces(ctx, t, realstack.HostsOptions{Names: []string{"a", "b"}})
	c := startMigrationHosts(t, map[string]*realstack.NSHost{"host-a": hs.Host("a"), "host-b": hs.Host("b")},
		"/var/lib/libvirt/images/kvm-fleet-test")
	t.Logf("hosts up in %s", time.Since(t0).Round(time.Millisecond))
	f := newFleetCLI(t, c)
	cfg := f.provider(nil) + fleetVMs("", 2, 64, `disks = [{ disk_id = kvm_disk.d[each.key].id }]`) + `
resource "kvm_disk" "d" {
  for_each = kvm_cluster_placement.p.request
  name     = "${each.key}-disk"
  host     = kvm_cluster_placement.p.assignments[each.key]
  size_mib = 16
}
`
	step := time.Now()
	f.apply(cfg)
	t.Logf("create: %s", time.Since(step).Round(time.Millisecond))
	on := vmsOn(t, c)
	if len(on["host-a"]) != 1 || len(on["host-b"]) != 1 {
		t.Fatalf("spread gave %v, want one VM per host", on)
	}
	name := on["host-a"][0]
	clA, clB := testAccVMClient(t, c, "host-a"), testAccVMClient(t, c, "host-b")
	before, err := clA.GetVM(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := clA.SetMaintenance(ctx, api.Maintenance{Enabled: true, Reason: "kernel update"}); err != nil {
		t.Fatal(err)
	}
	plan := f.planChanges(cfg)
	wantIn(t, plan, "Host host-a is in maintenance (kernel update)", name+": host-a → host-b (host host-a is in maintenance)",
		`kvm_vm.vm["`+name+`"] will be updated in-place`, `kvm_disk.d["`+name+`"] will be updated in-place`,
		"Plan: 0 to add, 3 to change, 0 to destroy.")
	step = time.Now()
	f.apply(cfg)
	t.Logf("drain (live migration with its disk): %s", time.Since(step).Round(time.Millisecond))
	after, err := clB.GetVM(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if after.UUID != before.UUID || after.State != api.StateRunning {
		t.Fatalf("on host-b: UUID %s (was %s), state %s; want the same VM, running", after.UUID, before.UUID, after.State)
	}
	if _, err := clA.GetVM(ctx, name); !api.IsNotFound(err) {
		t.Fatalf("VM still on host-a (err %v)", err)
	}
	if _, err := clA.GetVolume(ctx, "default", name+"-disk"); !api.IsNotFound(err) {
		t.Fatalf("disk still on host-a (err %v)", err)
	}
	f.planEmpty(cfg, "after the drain")
	if _, err := clA.SetMaintenance(ctx, api.Maintenance{Enabled: false}); err != nil {
		t.Fatal(err)
	}
	f.planEmpty(cfg, "after leaving maintenance")
	f.destroy(cfg)
	t.Logf("total %s", time.Since(t0).Round(time.Millisecond))
}
