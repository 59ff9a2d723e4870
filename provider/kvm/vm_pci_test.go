package kvm

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"testing"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// testAccPCIConfig places VM "gpu" on a host with gpu0 (host_labels) and
// gives it devices; extra is appended.
func testAccPCIConfig(c *harness.Cluster, host, devices, extra string) string {
	return c.ProviderHCL() + fmt.Sprintf(`
data "kvm_host" "a" { name = "host-a" }
data "kvm_host" "b" { name = "host-b" }

resource "kvm_cluster_placement" "pci" {
  request = {
    "gpu" = { vcpu = 1, memory_mib = 64, host_labels = { "pci.gpu0" = "true" } }
  }
}

resource "kvm_vm" "gpu" {
  name             = "gpu"
  host             = %s
  vcpu             = 1
  memory_mib       = 64
  shutdown_timeout = 0
  %s
}
%s
`, host, devices, extra)
}

// PCI passthrough end to end on libvirt's test driver given PCI node
// devices: the inventory in kvm_host, placement by the automatic pci.NAME
// label, a VM with devices (hostdevs at the host's addresses, read back by
// name), one restart to change them, import, the host's refusals and the
// plan-time refusal to migrate.
func TestAccVM_pciDevices(t *testing.T) {
	uri, err := harness.WriteTestDriverPCI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c := startHosts(t, harness.Options{
		Hosts: []string{"host-a", "host-b"}, ExtraArgs: vmTestHostArgs,
		ExtraHostArgs: map[string][]string{
			"host-a": {"--libvirt-uri", uri, "--pci-device", "gpu0=0000:01:00.0,nic1=0000:3b:00.1", "--pci-device", "ghost=0000:af:00.0"},
			// host-b names gpu0 too, at an address its libvirt does not
			// have: no label, so placement must not pick it.
			"host-b": {"--pci-device", "gpu0=0000:01:00.0", "--migration-uri", "qemu+tcp://127.0.0.1:1/system"},
		},
	})
	cl := testAccVMClient(t, c, "host-a")
	addr := "kvm_vm.gpu"
	placed := `kvm_cluster_placement.pci.assignments["gpu"]`
	var uuid string
	onHost := func(want ...string) resource.TestCheckFunc {
		return testAccCheckVMOnHost(cl, "gpu", func(vm *api.VM) error {
			if uuid == "" {
				uuid = vm.UUID
			}
			if vm.UUID != uuid {
				return fmt.Errorf("the VM was re-created: UUID %s, was %s", vm.UUID, uuid)
			}
			if !slices.Equal(vm.PCIDevices, want) || vm.State != api.StateRunning {
				return fmt.Errorf("VM on host-a has pci_devices %v (%s), want %v", vm.PCIDevices, vm.State, want)
			}
			h, err := cl.Host(context.Background())
			if err != nil {
				return err
			}
			for _, d := range h.PCIDevices {
				if used := slices.Contains(want, d.Name); used != (d.UsedBy == "gpu") {
					return fmt.Errorf("host-a's %s is used by %q", d.Name, d.UsedBy)
				}
			}
			return nil
		})
	}
	pci := func(i int, key string) tfjsonpath.Path {
		return tfjsonpath.New("pci_devices").AtSliceIndex(i).AtMapKey(key)
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy:             testAccCheckVMDestroy(c),
		Steps: []resource.TestStep{
			{
				Config: testAccPCIConfig(c, placed, `pci_devices = ["gpu0"]`, ""),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_cluster_placement.pci", tfjsonpath.New("assignments").AtMapKey("gpu"), knownvalue.StringExact("host-a")),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("pci_devices"), knownvalue.ListExact([]knownvalue.Check{knownvalue.StringExact("gpu0")})),
					statecheck.ExpectKnownValue("data.kvm_host.a", pci(0, "name"), knownvalue.StringExact("gpu0")),
					statecheck.ExpectKnownValue("data.kvm_host.a", pci(0, "address"), knownvalue.StringExact("0000:01:00.0")),
					statecheck.ExpectKnownValue("data.kvm_host.a", pci(0, "vendor"), knownvalue.StringExact("NVIDIA Corporation")),
					statecheck.ExpectKnownValue("data.kvm_host.a", pci(0, "vendor_id"), knownvalue.StringExact("0x10de")),
					statecheck.ExpectKnownValue("data.kvm_host.a", pci(0, "product"), knownvalue.StringExact("TU104GL [Tesla T4]")),
					statecheck.ExpectKnownValue("data.kvm_host.a", pci(0, "iommu_group"), knownvalue.Int64Exact(12)),
					statecheck.ExpectKnownValue("data.kvm_host.a", pci(0, "present"), knownvalue.Bool(true)),
					statecheck.ExpectKnownValue("data.kvm_host.a", pci(2, "name"), knownvalue.StringExact("ghost")),
					statecheck.ExpectKnownValue("data.kvm_host.a", pci(2, "present"), knownvalue.Bool(false)),
					statecheck.ExpectKnownValue("data.kvm_host.a", pci(2, "iommu_group"), knownvalue.Int64Exact(-1)),
					statecheck.ExpectKnownValue("data.kvm_host.a", tfjsonpath.New("labels").AtMapKey("pci.gpu0"), knownvalue.StringExact("true")),
					statecheck.ExpectKnownValue("data.kvm_host.b", pci(0, "present"), knownvalue.Bool(false)),
					statecheck.ExpectKnownValue("data.kvm_host.b", tfjsonpath.New("labels"), knownvalue.MapExact(map[string]knownvalue.Check{})),
				},
				Check: onHost("gpu0"),
			},
			{
				// Another device: one restart, in place.
				Config: testAccPCIConfig(c, placed, `pci_devices = ["nic1", "gpu0"]`, ""),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate),
					plancheck.ExpectUnknownValue(addr, tfjsonpath.New("state")),
				}},
				Check: onHost("nic1", "gpu0"),
			},
			{
				ResourceName:      addr,
				ImportState:       true,
				ImportStateId:     "host-a/gpu",
				ImportStateVerify: true,
			},
			{
				// Another VM cannot have a device the first one has, nor a
				// device the host does not name, or names but lacks.
				Config: testAccPCIConfig(c, placed, `pci_devices = ["nic1", "gpu0"]`, `
resource "kvm_vm" "other" {
  name        = "other"
  host        = "host-a"
  vcpu        = 1
  memory_mib  = 64
  pci_devices = ["gpu0"]
}`),
				ExpectError: regexp.MustCompile(`PCI\s+device\s+gpu0\s+\(0000:01:00.0\)\s+on\s+host\s+host-a\s+is\s+already\s+used\s+by\s+VM\s+gpu`),
			},
			{
				Config: testAccPCIConfig(c, placed, `pci_devices = ["nic1", "gpu0"]`, `
resource "kvm_vm" "other" {
  name        = "other"
  host        = "host-a"
  vcpu        = 1
  memory_mib  = 64
  pci_devices = ["gpu9"]
}`),
				ExpectError: regexp.MustCompile(`host\s+host-a\s+has\s+no\s+PCI\s+device\s+named\s+"gpu9";\s+it\s+has\s+gpu0,\s+nic1,\s+ghost`),
			},
			{
				Config: testAccPCIConfig(c, placed, `pci_devices = ["nic1", "gpu0"]`, `
resource "kvm_vm" "other" {
  name        = "other"
  host        = "host-a"
  vcpu        = 1
  memory_mib  = 64
  pci_devices = ["ghost"]
}`),
				ExpectError: regexp.MustCompile(`PCI\s+device\s+ghost\s+\(0000:af:00.0\)\s+is\s+not\s+present\s+on\s+host\s+host-a`),
			},
			{
				// No migration with devices: refused at plan time.
				Config:      testAccPCIConfig(c, `"host-b"`, `pci_devices = ["nic1", "gpu0"]`, ""),
				PlanOnly:    true,
				ExpectError: regexp.MustCompile(`(?s)VM\s+With\s+PCI\s+Devices\s+Cannot\s+Migrate.*VM\s+gpu\s+has\s+PCI\s+passthrough\s+devices\s+\(pci_devices\s+nic1,\s+gpu0\)`),
			},
			{
				// Without devices: one restart, and they are free again.
				Config: testAccPCIConfig(c, placed, "", ""),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("pci_devices"), knownvalue.Null()),
				},
				Check: onHost(),
			},
		},
	})
}
