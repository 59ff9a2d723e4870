package kvm

import (
	"context"
	"fmt"
	"regexp"
	"testing"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// snapshotTestHostArgs leave room for a VM: libvirt's test driver ships a
// domain "test" that allocates 8 GiB of a 3 GiB node, so at the default
// memory_overcommit of 1 every new VM is refused as "full".
var snapshotTestHostArgs = []string{"--memory-overcommit", "4"}

// snapshotTestVM creates a small running VM with one disk through the
// client, so these tests do not depend on kvm_vm.
func snapshotTestVM(t *testing.T, cl *client.Client, name string) *api.VM {
	t.Helper()
	ctx := context.Background()
	if _, err := cl.PutVolume(ctx, "default", name+"-root", api.VolumeSpec{SizeMiB: 64}); err != nil {
		t.Fatalf("creating disk for VM %s: %v", name, err)
	}
	vm, err := cl.PutVM(ctx, name, api.VMSpec{
		VCPU: 1, MemoryMiB: 64, Running: true,
		Disks: []api.VMDisk{{Pool: "default", Volume: name + "-root"}},
	})
	if err != nil {
		t.Fatalf("creating VM %s: %v", name, err)
	}
	if vm.UUID == "" {
		t.Fatalf("VM %s has no UUID", name)
	}
	return vm
}

func testAccCheckSnapshotCurrent(cl *client.Client, vm, name string) resource.TestCheckFunc {
	return func(*terraform.State) error {
		s, err := cl.GetSnapshot(context.Background(), vm, name)
		if err != nil {
			return err
		}
		if !s.Current {
			return fmt.Errorf("snapshot %s of %s is not the current one", name, vm)
		}
		return nil
	}
}

func TestAccSnapshot_basic(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a", "host-b"}, ExtraArgs: snapshotTestHostArgs})
	cl := diskTestClient(t, c, "host-a")
	vm := snapshotTestVM(t, cl, "web")
	const desc = `before <upgrade> & "quotes" 'single' </description>`
	cfg := func(trigger string) string {
		return c.ProviderHCL() + fmt.Sprintf(`
resource "kvm_snapshot" "one" {
  vm_id          = "host-a/web"
  name           = "one"
  description    = %s
  include_memory = true
  revert_trigger = %s
}

resource "kvm_snapshot" "two" {
  vm_id          = %q
  name           = "two"
  include_memory = true
  depends_on     = [kvm_snapshot.one]
}
`, hclString(desc), trigger, vm.UUID)
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy: func(*terraform.State) error {
			snaps, err := cl.ListSnapshots(context.Background(), "web")
			if err != nil {
				return err
			}
			if len(snaps) != 0 {
				return fmt.Errorf("%d snapshots of web remain after destroy", len(snaps))
			}
			return nil
		},
		Steps: []resource.TestStep{
			{
				Config: cfg("null"),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_snapshot.one", tfjsonpath.New("id"), knownvalue.StringExact("host-a/web/one")),
					statecheck.ExpectKnownValue("kvm_snapshot.one", tfjsonpath.New("description"), knownvalue.StringExact(desc)),
					statecheck.ExpectKnownValue("kvm_snapshot.one", tfjsonpath.New("include_memory"), knownvalue.Bool(true)),
					statecheck.ExpectKnownValue("kvm_snapshot.one", tfjsonpath.New("created_at"),
						knownvalue.StringRegexp(regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`))),
					statecheck.ExpectKnownValue("kvm_snapshot.one", tfjsonpath.New("parent"), knownvalue.Null()),
					// vm_id by UUID finds the VM on whichever host has it.
					statecheck.ExpectKnownValue("kvm_snapshot.two", tfjsonpath.New("id"), knownvalue.StringExact("host-a/web/two")),
					statecheck.ExpectKnownValue("kvm_snapshot.two", tfjsonpath.New("vm_id"), knownvalue.StringExact(vm.UUID)),
					statecheck.ExpectKnownValue("kvm_snapshot.two", tfjsonpath.New("parent"), knownvalue.StringExact("one")),
					statecheck.ExpectKnownValue("kvm_snapshot.two", tfjsonpath.New("description"), knownvalue.Null()),
				},
				Check: func(*terraform.State) error {
					s, err := cl.GetSnapshot(context.Background(), "web", "one")
					if err != nil {
						return err
					}
					if s.Description != desc {
						return fmt.Errorf("host has description %q, want %q", s.Description, desc)
					}
					return nil
				},
			},
			{
				ResourceName:            "kvm_snapshot.one",
				ImportState:             true,
				ImportStateId:           "host-a/web/one",
				ImportStateVerify:       true,
				ImportStateVerifyIgnore: []string{"timeouts", "revert_trigger"},
			},
			{
				// Setting the trigger reverts in place: "one" becomes current.
				Config: cfg(`"r1"`),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_snapshot.one", plancheck.ResourceActionUpdate),
					plancheck.ExpectResourceAction("kvm_snapshot.two", plancheck.ResourceActionNoop),
				}},
				Check: testAccCheckSnapshotCurrent(cl, "web", "one"),
			},
			{
				// Deleted out of band: planned as a create.
				PreConfig: func() {
					if err := cl.DeleteSnapshot(context.Background(), "web", "two"); err != nil {
						t.Fatal(err)
					}
				},
				Config: cfg(`"r1"`),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_snapshot.two", plancheck.ResourceActionCreate),
					plancheck.ExpectResourceAction("kvm_snapshot.one", plancheck.ResourceActionNoop),
				}},
				Check: testAccCheckSnapshotCurrent(cl, "web", "two"),
			},
		},
	})
}

func TestAccSnapshot_invalid(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: snapshotTestHostArgs})
	cl := diskTestClient(t, c, "host-a")
	snapshotTestVM(t, cl, "db")
	snap := func(vmID, name string) string {
		return c.ProviderHCL() + fmt.Sprintf(`
resource "kvm_snapshot" "bad" {
  vm_id = %s
  name  = %s
}`, hclString(vmID), hclString(name))
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{Config: snap("host-a/db", "../x</name>"), PlanOnly: true, ExpectError: regexp.MustCompile(`snapshot name .* is invalid`)},
			{Config: snap("host-a/db", "a\x00b"), PlanOnly: true, ExpectError: regexp.MustCompile(`snapshot name .* is invalid`)},
			{Config: snap("db", "ok"), PlanOnly: true, ExpectError: regexp.MustCompile(`<host>/<vm name>`)},
			{Config: snap("host-a/../db", "ok"), PlanOnly: true, ExpectError: regexp.MustCompile(`<host>/<vm name>`)},
			{Config: snap("host-z/db", "ok"), PlanOnly: true, ExpectError: regexp.MustCompile(`host "host-z" is not configured`)},
			// db runs: a snapshot without memory is refused at plan time,
			// as libvirt cannot take one (include_memory defaults to false).
			{Config: snap("host-a/db", "ok"), PlanOnly: true, ExpectError: regexp.MustCompile(`(?s)Snapshot of a Running VM Needs Memory.*include_memory\s+=\s+true`)},
			{
				Config:      snap("00000000-0000-0000-0000-000000000000", "ok"),
				ExpectError: regexp.MustCompile(`(?s)no VM\s+with UUID\s+00000000-0000-0000-0000-000000000000`),
			},
		},
	})
	snaps, err := cl.ListSnapshots(context.Background(), "db")
	if err != nil {
		t.Fatal(err)
	}
	if len(snaps) != 0 {
		t.Fatalf("invalid snapshots reached the host: %+v", snaps)
	}
}
