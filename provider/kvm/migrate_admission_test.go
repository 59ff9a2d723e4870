package kvm

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

func migrateAdmissionConfig(providerHCL, host string) string {
	return providerHCL + fmt.Sprintf(`
resource "kvm_vm" "vm" {
  name             = "mig-vm"
  host             = %q
  vcpu             = 1
  memory_mib       = 64
  shutdown_timeout = 0
}
`, host)
}

// migrateAdmissionCheck wants the VM still on host-a only, and no
// reservation left on host-b; with reserved, host-b's log shows that one
// was made and released.
func migrateAdmissionCheck(c *harness.Cluster, clA, clB *client.Client, reserved bool) resource.TestCheckFunc {
	return func(*terraform.State) error {
		bg := context.Background()
		log := c.Host("host-b").Log()
		made := strings.Contains(log, "reserved room for an arriving VM") && strings.Contains(log, "vm=mig-vm")
		if made != reserved || reserved && !strings.Contains(log, "reservation released") {
			return fmt.Errorf("host-b's log, want a reservation made (%v) and released:\n%s", reserved, log)
		}
		if _, err := clA.GetVM(bg, "mig-vm"); err != nil {
			return fmt.Errorf("VM on host-a: %w", err)
		}
		if _, err := clB.GetVM(bg, "mig-vm"); !api.IsNotFound(err) {
			return fmt.Errorf("VM appeared on host-b (err %v)", err)
		}
		if l, err := clB.ListReservations(bg); err != nil || len(l) != 0 {
			return fmt.Errorf("host-b's reservations after the migration: %+v, %v; want none", l, err)
		}
		return nil
	}
}

// A migration to a host without room is refused by that host's own
// admission (PUT /v1/reservations, 409 full naming it) before the source is
// asked to migrate; one to a host with room reserves there, and releases
// the reservation when the migration fails (embedded default: libvirt's
// test driver cannot migrate, so every started migration fails).
func TestAccMigrate_targetAdmission(t *testing.T) {
	for _, tc := range []struct {
		name     string
		memory   string // host-b's --memory-overcommit
		reserved bool
		wantErr  string
	}{
		{"full", "0.01", false, `VM mig-vm cannot move from host host-a to host host-b:\s+host\s+host-b\s+is\s+full:\s+VM\s+mig-vm\s+needs\s+64\s+MiB\s+of\s+memory\s+but\s+only\s+30\s+of\s+30\s+MiB\s+are\s+free(?s).*Nothing\s+was\s+moved`},
		{"room", "10", true, `Migrating VM mig-vm from host host-a to host host-b\s+\(live\)\s+failed`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startHosts(t, harness.Options{
				Hosts: []string{"host-a", "host-b"}, ExtraArgs: vmTestHostArgs,
				ExtraHostArgs: map[string][]string{"host-b": {"--migration-uri", "qemu+tcp://127.0.0.1:1/system", "--memory-overcommit", tc.memory}},
			})
			clA, clB := testAccVMClient(t, c, "host-a"), testAccVMClient(t, c, "host-b")
			resource.Test(t, resource.TestCase{
				ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
				Steps: []resource.TestStep{
					{Config: migrateAdmissionConfig(c.ProviderHCL(), "host-a")},
					{
						Config:      migrateAdmissionConfig(c.ProviderHCL(), "host-b"),
						ExpectError: regexp.MustCompile(tc.wantErr),
					},
					{
						// Nothing moved: going back is no change at all.
						Config: migrateAdmissionConfig(c.ProviderHCL(), "host-a"),
						ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
							plancheck.ExpectEmptyPlan(),
						}},
						Check: migrateAdmissionCheck(c, clA, clB, tc.reserved),
					},
				},
			})
		})
	}
}
