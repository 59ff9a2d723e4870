package kvm

import (
	"fmt"
	"testing"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"

	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// TestAccSnapshot_sharedPool: a VM whose disk is on a shared directory
// pool is snapshotted like one on a local pool (an internal qcow2
// snapshot, written into the shared file), round-trips, and reverts.
func TestAccSnapshot_sharedPool(t *testing.T) {
	c := startHosts(t, harness.Options{
		Hosts:     []string{"host-a"},
		ExtraArgs: append(append([]string{}, snapshotTestHostArgs...), "--pool", "default-pool", "--shared-pool", "default-pool"),
	})
	cfg := func(trigger string) string {
		return c.ProviderHCL() + fmt.Sprintf(`
resource "kvm_disk" "shared" {
  name     = "snap-shared"
  host     = "host-a"
  pool     = "default-pool"
  format   = "qcow2"
  size_mib = 64
}

resource "kvm_vm" "web" {
  name       = "snapweb"
  host       = "host-a"
  vcpu       = 1
  memory_mib = 64
  disks      = [{ disk_id = kvm_disk.shared.id }]
}

resource "kvm_snapshot" "one" {
  vm_id          = kvm_vm.web.id
  name           = "one"
  include_memory = true
  revert_trigger = %q
}
`, trigger)
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config: cfg("a"),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_snapshot.one", tfjsonpath.New("id"), knownvalue.StringExact("host-a/snapweb/one")),
				},
			},
			{Config: cfg("b")}, // revert in place
		},
	})
}
