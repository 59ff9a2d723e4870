package kvm

import (
	"fmt"
	"regexp"
	"strings"
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

// noSecretInState fails when any attribute of any resource holds secret.
func noSecretInState(secret string) resource.TestCheckFunc {
	return func(s *terraform.State) error {
		for _, m := range s.Modules {
			for addr, r := range m.Resources {
				for k, v := range r.Primary.Attributes {
					if strings.Contains(v, secret) {
						return fmt.Errorf("state of %s holds the write-only user data in %s", addr, k)
					}
				}
			}
		}
		return nil
	}
}

// userDataOnHost checks the user data the host has for vm: it keeps only
// its hash (the test driver builds no seed ISO; the real stack's guests
// read the ISO, see guest_real_test.go).
func userDataOnHost(cl *client.Client, vm, want string) resource.TestCheckFunc {
	return testAccCheckVMOnHost(cl, vm, func(v *api.VM) error {
		if v.CloudInit == nil || v.CloudInit.UserDataSHA256 != api.UserDataHash(want) {
			return fmt.Errorf("VM %s has user data %+v, want the hash of %q", vm, v.CloudInit, want)
		}
		return nil
	})
}

func TestAccVM_userDataWriteOnly(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs})
	cl := testAccVMClient(t, c, "host-a")
	addr := "kvm_vm.test"
	const first, second = "#cloud-config\npassword: s3cret-one\n", "#cloud-config\npassword: s3cret-two\n"
	cfg := func(userData string, version int) string {
		return testAccVMSmallConfig(c, "wo", fmt.Sprintf(`vcpu = 1
memory_mib = 64
cloud_init = {
  user_data_wo         = %q
  user_data_wo_version = %d
}`, userData, version))
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy:             testAccCheckVMDestroy(c),
		Steps: []resource.TestStep{
			{
				Config: testAccVMSmallConfig(c, "wo", `vcpu = 1
memory_mib = 64
cloud_init = {
  user_data    = "#cloud-config\n"
  user_data_wo = "#cloud-config\n"
  user_data_wo_version = 1
}`),
				ExpectError: regexp.MustCompile(`(?s)user_data.*cannot be specified when|Invalid Attribute Combination`),
			},
			{
				Config:      testAccVMSmallConfig(c, "wo", "vcpu = 1\nmemory_mib = 64\n"+`cloud_init = { user_data_wo = "#cloud-config\n" }`),
				ExpectError: regexp.MustCompile(`user_data_wo_version`),
			},
			{
				Config: cfg(first, 1),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("cloud_init"), knownvalue.ObjectExact(map[string]knownvalue.Check{
						"user_data": knownvalue.Null(), "user_data_wo": knownvalue.Null(), "user_data_wo_version": knownvalue.Int64Exact(1),
						"meta_data": knownvalue.Null(), "network_config": knownvalue.Null(),
					})),
				},
				Check: resource.ComposeTestCheckFunc(noSecretInState("s3cret"), userDataOnHost(cl, "wo", first)),
			},
			{
				// A new value alone changes nothing: the version does.
				Config:           cfg(second, 1),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{plancheck.ExpectEmptyPlan()}},
				Check:            userDataOnHost(cl, "wo", first),
			},
			{
				Config: cfg(second, 2),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate),
				}},
				Check: resource.ComposeTestCheckFunc(noSecretInState("s3cret"), userDataOnHost(cl, "wo", second),
					// Like a user_data change: at the next boot, no restart.
					testAccCheckVMOnHost(cl, "wo", func(v *api.VM) error {
						if v.State != api.StateRunning {
							return fmt.Errorf("VM wo is %s", v.State)
						}
						return nil
					})),
			},
			{
				ResourceName:      addr,
				ImportState:       true,
				ImportStateId:     "host-a/wo",
				ImportStateVerify: true,
				// An import knows neither the version nor the value: it
				// reads user_data as the marker with the host's hash.
				ImportStateVerifyIgnore: []string{"cloud_init.user_data", "cloud_init.user_data_wo_version"},
			},
		},
	})
}
