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
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

func testAccVMGuestConfig(c *harness.Cluster, extra string) string {
	return testAccVMSmallConfig(c, "guest-1", `
  vcpu               = 1
  memory_mib         = 64
  network_interfaces = [{ network = "lan" }]
`+extra)
}

// guest_agent defaults to true and is read back from the domain; the
// addresses a guest reports are computed, empty on the test driver, and an
// update that does not touch the NICs leaves them known in the plan.
func TestAccVM_guestAgent(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs})
	cl := testAccVMClient(t, c, "host-a")
	testAccVMPutNetwork(t, cl, "lan")
	addr := "kvm_vm.test"
	nic0 := tfjsonpath.New("network_interfaces").AtSliceIndex(0)
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy:             testAccCheckVMDestroy(c),
		Steps: []resource.TestStep{
			{
				Config: testAccVMGuestConfig(c, ""),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectUnknownValue(addr, tfjsonpath.New("ipv4_address")),
					plancheck.ExpectUnknownValue(addr, nic0.AtMapKey("addresses")),
				}},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("guest_agent"), knownvalue.Bool(true)),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("ipv4_address"), knownvalue.Null()),
					statecheck.ExpectKnownValue(addr, nic0.AtMapKey("addresses"), knownvalue.ListExact([]knownvalue.Check{})),
					statecheck.ExpectKnownValue(addr, nic0.AtMapKey("ipv4_address"), knownvalue.Null()),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("wait_for_ip"), knownvalue.Null()),
				},
				Check: testAccCheckVMOnHost(cl, "guest-1", func(vm *api.VM) error {
					if vm.GuestAgent == nil || !*vm.GuestAgent {
						return fmt.Errorf("guest_agent on the host: %v", vm.GuestAgent)
					}
					// The test driver keeps no serial log: an empty console.
					con, err := cl.VMConsole(context.Background(), "guest-1", 0)
					if err != nil || con.VM != "guest-1" || con.Text != "" || con.Truncated {
						return fmt.Errorf("console: %+v %v", con, err)
					}
					if _, err := cl.VMConsole(context.Background(), "nope", 0); !isNotFound(err) {
						return fmt.Errorf("console of a missing VM: %v", err)
					}
					return nil
				}),
			},
			{
				// A live change: the addresses stay known in the plan.
				Config: testAccVMGuestConfig(c, `  description = "x"`),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate),
					plancheck.ExpectKnownValue(addr, nic0.AtMapKey("addresses"), knownvalue.ListExact([]knownvalue.Check{})),
					plancheck.ExpectKnownValue(addr, tfjsonpath.New("ipv4_address"), knownvalue.Null()),
				}},
			},
			{
				// Off: one planned restart, read back from the domain.
				Config: testAccVMGuestConfig(c, `  description = "x"
  guest_agent = false`),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate),
					plancheck.ExpectUnknownValue(addr, nic0.AtMapKey("addresses")),
				}},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("guest_agent"), knownvalue.Bool(false)),
				},
				Check: testAccCheckVMOnHost(cl, "guest-1", func(vm *api.VM) error {
					if vm.GuestAgent == nil || *vm.GuestAgent {
						return fmt.Errorf("guest_agent on the host: %v", vm.GuestAgent)
					}
					return nil
				}),
			},
			{
				ResourceName:      addr,
				ImportState:       true,
				ImportStateId:     "host-a/guest-1",
				ImportStateVerify: true,
			},
			{
				// Removing the attribute goes back to the default, true.
				Config: testAccVMGuestConfig(c, `  description = "x"`),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("guest_agent"), knownvalue.Bool(true)),
				},
			},
		},
	})
}

// wait_for_ip and static addresses fail the plan when they cannot work.
func TestAccVM_guestValidation(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs})
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config: testAccVMGuestConfig(c, `  guest_agent = false
  wait_for_ip = {}`),
				PlanOnly:    true,
				ExpectError: regexp.MustCompile(`wait_for_ip Needs the Guest Agent`),
			},
			{
				Config:      testAccVMGuestConfig(c, `  wait_for_ip = { timeout = "soon" }`),
				PlanOnly:    true,
				ExpectError: regexp.MustCompile(`must be a positive duration`),
			},
			{
				Config:      testAccVMGuestConfig(c, `  wait_for_ip = { timeout = "-5m" }`),
				PlanOnly:    true,
				ExpectError: regexp.MustCompile(`must be a positive duration`),
			},
			{
				Config: testAccVMSmallConfig(c, "guest-2", `
  vcpu       = 1
  memory_mib = 64
  network_interfaces = [{ network = "lan", ipv4_address = "10.0.0.300" }]
`),
				PlanOnly:    true,
				ExpectError: regexp.MustCompile(`is not an IPv4 address`),
			},
			{
				Config: testAccVMSmallConfig(c, "guest-2", `
  vcpu       = 1
  memory_mib = 64
  network_interfaces = [
    { network = "lan", ipv4_address = "10.0.0.5" },
    { network = "lan", ipv4_address = "10.0.0.5" },
  ]
`),
				PlanOnly:    true,
				ExpectError: regexp.MustCompile(`(?s)Duplicate IPv4 Address.*10\.0\.0\.5 is already the ipv4_address of\s+network_interfaces\[0\]`),
			},
		},
	})
}

// wait_for_ip on a guest that never reports an address (the test driver
// runs none) fails the create after the timeout, naming the NIC.
func TestAccVM_waitForIPTimeout(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs})
	cl := testAccVMClient(t, c, "host-a")
	testAccVMPutNetwork(t, cl, "lan")
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy:             testAccCheckVMDestroy(c),
		Steps: []resource.TestStep{
			{
				Config:      testAccVMGuestConfig(c, `  wait_for_ip = { timeout = "3s" }`),
				ExpectError: regexp.MustCompile(`(?s)Timed Out Waiting for IP.*after 3s,\s+network_interfaces\[0\]\s+\(network\s+lan,\s+MAC\s+52:54:00`),
			},
		},
	})
	// On update too; the change itself is applied and recorded, and the
	// next apply without wait_for_ip converges with an empty plan after.
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy:             testAccCheckVMDestroy(c),
		Steps: []resource.TestStep{
			{Config: testAccVMGuestConfig(c, "")},
			{
				Config: testAccVMGuestConfig(c, `  description = "waited"
  wait_for_ip = { timeout = "2s" }`),
				ExpectError: regexp.MustCompile(`Timed Out Waiting for IP`),
			},
			{
				Config: testAccVMGuestConfig(c, `  description = "waited"`),
				Check: testAccCheckVMOnHost(cl, "guest-1", func(vm *api.VM) error {
					if vm.Description != "waited" {
						return fmt.Errorf("description %q", vm.Description)
					}
					return nil
				}),
			},
		},
	})
}

// A static address on a network that exists on the VM's host without a
// subnet fails the plan; on a network not there yet it is left to apply.
func TestAccVM_staticIPv4NeedsSubnet(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs})
	cl := testAccVMClient(t, c, "host-a")
	testAccVMPutNetwork(t, cl, "lan")
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config: testAccVMSmallConfig(c, "static-1", `
  vcpu       = 1
  memory_mib = 64
  network_interfaces = [{ network = "lan", ipv4_address = "10.20.0.10" }]
`),
				PlanOnly:    true,
				ExpectError: regexp.MustCompile(`(?s)Network Has No Subnet.*network lan has no subnet on host host-a`),
			},
			{
				Config: testAccVMSmallConfig(c, "static-1", `
  vcpu       = 1
  memory_mib = 64
  network_interfaces = [{ network = "later", ipv4_address = "10.20.0.10" }]
`),
				PlanOnly:           true,
				ExpectNonEmptyPlan: true,
			},
		},
	})
}
