package kvm

import (
	"fmt"
	"regexp"
	"testing"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// testAccVMNUMAConfig is a two-cell hugepage VM pinned like a database:
// vCPU i on host CPU i, the emulator threads elsewhere.
func testAccVMNUMAConfig(node1, emulator string) string {
	return fmt.Sprintf(`
vcpu       = 2
memory_mib = 128
hugepages  = true
numa = [
  { cpus = "0", memory_mib = 64, host_nodes = "0" },
  { cpus = "1", memory_mib = 64, host_nodes = %q },
]
cpu = {
  pinning          = ["0", "1"]
  emulator_pinning = %q
}
`, node1, emulator)
}

// TestAccVM_memoryLayout creates a VM with hugepages, NUMA cells and
// emulator pinning on the test driver, imports it, re-pins the emulator
// live and changes a cell in place (one restart, same domain).
func TestAccVM_memoryLayout(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs})
	cl := testAccVMClient(t, c, "host-a")
	addr := "kvm_vm.test"
	var uuid string
	keepUUID := testAccCheckVMOnHost(cl, "db", func(vm *api.VM) error {
		if uuid == "" {
			uuid = vm.UUID
		}
		if vm.UUID != uuid {
			return fmt.Errorf("the VM was re-created: UUID %s, was %s", vm.UUID, uuid)
		}
		return nil
	})
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy:             testAccCheckVMDestroy(c),
		Steps: []resource.TestStep{
			{
				// "2,3" is stored by libvirt as "2-3"; the state keeps "2,3".
				Config: testAccVMSmallConfig(c, "db", testAccVMNUMAConfig("1", "2,3")),
				Check: resource.ComposeAggregateTestCheckFunc(keepUUID, testAccCheckVMOnHost(cl, "db", func(vm *api.VM) error {
					want := []api.NUMACell{{CPUs: "0", MemoryMiB: 64, HostNodes: "0"}, {CPUs: "1", MemoryMiB: 64, HostNodes: "1"}}
					if !vm.Hugepages || fmt.Sprint(vm.NUMA) != fmt.Sprint(want) || vm.CPU == nil || vm.CPU.EmulatorPinning != "2,3" {
						return fmt.Errorf("memory layout not applied: hugepages %v numa %+v cpu %+v", vm.Hugepages, vm.NUMA, vm.CPU)
					}
					return nil
				})),
				ConfigStateChecks: nil,
			},
			{
				ResourceName:      addr,
				ImportState:       true,
				ImportStateId:     "host-a/db",
				ImportStateVerify: true,
				// Import reads libvirt's spelling of the emulator set.
				ImportStateVerifyIgnore: []string{"cpu.emulator_pinning", "migration", "shutdown_timeout", "timeouts"},
			},
			{
				// Emulator pinning: live, nothing restarts.
				Config: testAccVMSmallConfig(c, "db", testAccVMNUMAConfig("1", "3")),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate),
					plancheck.ExpectKnownValue(addr, tfjsonpath.New("state"), knownvalue.StringExact("running")),
				}},
				Check: resource.ComposeAggregateTestCheckFunc(keepUUID, testAccCheckVMOnHost(cl, "db", func(vm *api.VM) error {
					if vm.CPU == nil || vm.CPU.EmulatorPinning != "3" {
						return fmt.Errorf("emulator pinning not applied: %+v", vm.CPU)
					}
					return nil
				})),
			},
			{
				// A NUMA cell: one restart in place, never a re-create.
				Config: testAccVMSmallConfig(c, "db", testAccVMNUMAConfig("0", "3")),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate),
					plancheck.ExpectUnknownValue(addr, tfjsonpath.New("state")),
				}},
				Check: resource.ComposeAggregateTestCheckFunc(keepUUID, testAccCheckVMOnHost(cl, "db", func(vm *api.VM) error {
					if len(vm.NUMA) != 2 || vm.NUMA[1].HostNodes != "0" || vm.State != api.StateRunning {
						return fmt.Errorf("numa change not applied: %+v (%s)", vm.NUMA, vm.State)
					}
					return nil
				})),
			},
			{
				// Dropping hugepages and numa: one restart, same domain.
				Config: testAccVMSmallConfig(c, "db", "vcpu = 2\nmemory_mib = 128"),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate),
				}},
				Check: resource.ComposeAggregateTestCheckFunc(keepUUID, testAccCheckVMOnHost(cl, "db", func(vm *api.VM) error {
					if vm.Hugepages || len(vm.NUMA) > 0 || (vm.CPU != nil && vm.CPU.EmulatorPinning != "") {
						return fmt.Errorf("memory layout not removed: %+v %+v %+v", vm.Hugepages, vm.NUMA, vm.CPU)
					}
					return nil
				})),
			},
		},
	})
}

// TestAccVM_memoryLayoutInvalid: mistakes fail the plan with the attribute
// named; what only the host knows fails the apply with its numbers.
func TestAccVM_memoryLayoutInvalid(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs})
	step := func(extra, msg string, planOnly bool) resource.TestStep {
		return resource.TestStep{Config: testAccVMSmallConfig(c, "bad", extra), PlanOnly: planOnly, ExpectError: regexp.MustCompile(msg)}
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy:             testAccCheckVMDestroy(c),
		Steps: []resource.TestStep{
			step(`vcpu = 2
memory_mib = 128
numa = [{ cpus = "0", memory_mib = 128 }]`, `(?s)Invalid NUMA Cells.*vCPU 1 is in no cell`, true),
			step(`vcpu = 2
memory_mib = 128
numa = [{ cpus = "0-1", memory_mib = 64 }, { cpus = "1", memory_mib = 64 }]`, `(?s)Invalid NUMA Cells.*both name vCPU 1`, true),
			step(`vcpu = 2
memory_mib = 128
numa = [{ cpus = "0", memory_mib = 64 }, { cpus = "1", memory_mib = 32 }]`, `(?s)Invalid NUMA Cells.*96 MiB.*memory_mib is 128`, true),
			step(`vcpu = 2
memory_mib = 128
max_memory_mib = 256
numa = [{ cpus = "0", memory_mib = 64 }, { cpus = "1", memory_mib = 64 }]`, `(?s)Invalid NUMA Cells.*max_memory_mib`, true),
			step(`vcpu = 1
memory_mib = 129
hugepages = true`, `(?s)Invalid Hugepage Memory.*multiple`, true),
			step(`vcpu = 1
memory_mib = 64
numa = [{ cpus = "0", memory_mib = 64, host_nodes = "x" }]`, `NUMA node set`, true),
			// Only the host knows its nodes, CPUs and free huge pages.
			step(`vcpu = 1
memory_mib = 64
numa = [{ cpus = "0", memory_mib = 64, host_nodes = "5" }]`, `(?s)names NUMA node 5.*host-a has NUMA nodes 0, 1`, false),
			step(`vcpu = 1
memory_mib = 64
cpu = { emulator_pinning = "99" }`, `(?s)host CPU 99.*CPUs 0-15`, false),
			// The test driver reports 512 free huge pages of 2 MiB (1 GiB).
			step(`vcpu = 1
memory_mib = 2048
hugepages = true`, `(?s)too\s+few\s+free\s+huge\s+pages.*needs\s+1024\s+pages\s+of\s+2048\s+KiB,\s+512\s+free`, false),
		},
	})
}
