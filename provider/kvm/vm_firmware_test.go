package kvm

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-testing/config"
	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// firmware, secure_boot and tpm on the test driver: created, read back,
// imported the same, and switched on the existing VM in place (same ID,
// an update the plan announces as a restart, never a replace).
func TestAccVM_firmware(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs})
	cl := testAccVMClient(t, c, "host-a")
	addr := "kvm_vm.test"
	var id string
	sameID := func(st *terraform.State) error {
		got := st.RootModule().Resources[addr].Primary.ID
		if id == "" {
			id = got
		} else if got != id {
			return fmt.Errorf("VM re-created: id %s, was %s", got, id)
		}
		return nil
	}
	onHost := func(firmware string, secureBoot, tpm bool) resource.TestCheckFunc {
		return resource.ComposeTestCheckFunc(sameID, testAccCheckVMOnHost(cl, "fw", func(vm *api.VM) error {
			if vm.Firmware != firmware || vm.SecureBoot != secureBoot || (vm.TPM != nil) != tpm {
				return fmt.Errorf("on the host: firmware %q secure_boot %v tpm %+v", vm.Firmware, vm.SecureBoot, vm.TPM)
			}
			return nil
		}))
	}
	const all = `
  firmware    = "efi"
  secure_boot = true
  tpm         = { version = "2.0" }`
	update := []plancheck.PlanCheck{plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate)}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy:             testAccCheckVMDestroy(c),
		Steps: []resource.TestStep{
			{
				Config: testAccVMSmallConfig(c, "fw", "  vcpu = 1\n  memory_mib = 64"+all),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("firmware"), knownvalue.StringExact("efi")),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("secure_boot"), knownvalue.Bool(true)),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("tpm"), knownvalue.ObjectExact(map[string]knownvalue.Check{
						"version": knownvalue.StringExact("2.0")})),
				},
				Check: onHost("efi", true, true),
			},
			{
				ResourceName:      addr,
				ImportState:       true,
				ImportStateId:     "host-a/fw",
				ImportStateVerify: true,
				// cloud_init is absent; nothing else to ignore.
			},
			{
				// The TPM removed: an in-place update.
				Config:            testAccVMSmallConfig(c, "fw", "  vcpu = 1\n  memory_mib = 64\n  firmware = \"efi\"\n  secure_boot = true"),
				ConfigPlanChecks:  resource.ConfigPlanChecks{PreApply: update},
				ConfigStateChecks: []statecheck.StateCheck{statecheck.ExpectKnownValue(addr, tfjsonpath.New("tpm"), knownvalue.Null())},
				Check:             onHost("efi", true, false),
			},
			{
				// Back to the defaults, then everything added again.
				Config: testAccVMSmallConfig(c, "fw", "  vcpu = 1\n  memory_mib = 64"),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("firmware"), knownvalue.StringExact("bios")),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("secure_boot"), knownvalue.Bool(false)),
				},
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: update},
				Check:            onHost("bios", false, false),
			},
			{
				Config:           testAccVMSmallConfig(c, "fw", "  vcpu = 1\n  memory_mib = 64\n  tpm = { version = \"2.0\" }"),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: update},
				Check:            onHost("bios", false, true),
			},
			{
				Config:           testAccVMSmallConfig(c, "fw", "  vcpu = 1\n  memory_mib = 64"+all),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: update},
				Check:            onHost("efi", true, true),
			},
		},
	})
}

// secure_boot without firmware = "efi", and a TPM version other than 2.0,
// fail at plan time.
func TestAccVM_firmwareValidation(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs})
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config:      testAccVMSmallConfig(c, "fwbad", "  vcpu = 1\n  memory_mib = 64\n  secure_boot = true"),
				PlanOnly:    true,
				ExpectError: regexp.MustCompile(`(?s)Secure Boot Needs UEFI.*firmware = "efi"`),
			},
			{
				Config:      testAccVMSmallConfig(c, "fwbad", "  vcpu = 1\n  memory_mib = 64\n  firmware = \"bios\"\n  secure_boot = true"),
				PlanOnly:    true,
				ExpectError: regexp.MustCompile(`Secure Boot Needs UEFI`),
			},
			{
				Config:      testAccVMSmallConfig(c, "fwbad", "  vcpu = 1\n  memory_mib = 64\n  firmware = \"efi\"\n  tpm = { version = \"1.2\" }"),
				PlanOnly:    true,
				ExpectError: regexp.MustCompile(`(?s)version.*2\.0`),
			},
			{
				Config:      testAccVMSmallConfig(c, "fwbad", "  vcpu = 1\n  memory_mib = 64\n  firmware = \"uefi\""),
				PlanOnly:    true,
				ExpectError: regexp.MustCompile(`(?s)firmware.*bios.*efi`),
			},
		},
	})
}

// Each firmware change names its attribute in the "VM Will Restart"
// warning, by the host's rule.
func TestVMRestartAttributesFirmware(t *testing.T) {
	ctx := context.Background()
	base := vmModel{
		VCPU: types.Int64Value(1), MemoryMiB: types.Int64Value(128), MaxMemoryMiB: types.Int64Value(128),
		CPU: types.ObjectNull(vmCPUAttrTypes), Disks: types.ListNull(types.ObjectType{AttrTypes: vmDiskAttrTypes}),
		NetworkInterfaces: types.ListNull(types.ObjectType{AttrTypes: vmNICAttrTypes}), CloudInit: types.ObjectNull(vmCloudInitAttrTypes),
	}
	base.Firmware = types.StringValue("bios")
	base.SecureBoot = types.BoolValue(false)
	base.TPM = types.ObjectNull(vmTPMAttrTypes)
	efi := base
	efi.Firmware = types.StringValue("efi")
	sb := efi
	sb.SecureBoot = types.BoolValue(true)
	tpm := sb
	tpm.TPM = types.ObjectValueMust(vmTPMAttrTypes, map[string]attr.Value{"version": types.StringValue("2.0")})
	for _, tc := range []struct {
		from, to vmModel
		want     string
	}{
		{base, efi, "firmware"}, {efi, sb, "secure_boot"}, {sb, tpm, "tpm"}, {tpm, sb, "tpm"}, {base, tpm, "firmware,secure_boot,tpm"},
		{tpm, tpm, ""},
	} {
		if got := strings.Join(vmRestartAttributes(ctx, tc.from, tc.to), ","); got != tc.want {
			t.Errorf("%s/%s/%s -> %s/%s/%s: restart for %q, want %q", tc.from.Firmware, tc.from.SecureBoot, tc.from.TPM,
				tc.to.Firmware, tc.to.SecureBoot, tc.to.TPM, got, tc.want)
		}
	}
}

// examples/windows11 applies as written (on the test driver, which boots
// nothing) and reads back with an empty plan.
func TestAccExampleWindows11(t *testing.T) {
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "examples", "windows11", "main.tf"))
	if err != nil {
		t.Fatal(err)
	}
	example := string(b)
	// The tests' provider comes with its own address and configuration.
	start, end := strings.Index(example, "terraform {"), strings.Index(example, `provider "kvm" {}`)
	if start < 0 || end < start {
		t.Fatal("examples/windows11/main.tf no longer has the terraform and provider blocks this test replaces")
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("not really windows"))
	}))
	defer srv.Close()
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs})
	cfg := example[:start] + c.ProviderHCL() + example[end+len(`provider "kvm" {}`):]
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy:             testAccCheckVMDestroy(c),
		Steps: []resource.TestStep{{
			Config:          cfg,
			ConfigVariables: config.Variables{"image_url": config.StringVariable(srv.URL + "/win11.qcow2")},
			ConfigStateChecks: []statecheck.StateCheck{
				statecheck.ExpectKnownValue("kvm_vm.win11", tfjsonpath.New("firmware"), knownvalue.StringExact("efi")),
				statecheck.ExpectKnownValue("kvm_vm.win11", tfjsonpath.New("secure_boot"), knownvalue.Bool(true)),
				statecheck.ExpectKnownValue("kvm_vm.win11", tfjsonpath.New("tpm").AtMapKey("version"), knownvalue.StringExact("2.0")),
			},
		}},
	})
}
