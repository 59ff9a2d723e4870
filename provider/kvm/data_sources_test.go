package kvm

import (
	"context"
	"regexp"
	"testing"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// TestAccDataSources reads, by literal IDs, a base image and a VM that
// another state owns (made here through the API), uses the image as a
// base, and checks the data sources against what kvm_vm / kvm_disk give.
func TestAccDataSources(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs})
	cl := testAccVMClient(t, c, "host-a")
	testAccVMPutNetwork(t, cl, "lan")
	ctx := context.Background()
	if _, err := cl.PutVolume(ctx, "default", "base-img", api.VolumeSpec{SizeMiB: 32}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.PutVolume(ctx, "default", "shared-root", api.VolumeSpec{SizeMiB: 16}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.PutVM(ctx, "shared", api.VMSpec{VCPU: 2, MemoryMiB: 96, Running: true, Description: "owned elsewhere",
		Disks:      []api.VMDisk{{Pool: "default", Volume: "shared-root"}},
		Interfaces: []api.VMInterface{{Network: "lan"}},
		CloudInit:  &api.CloudInit{UserData: "#cloud-config\n", MetaData: "instance-id: shared\n"},
		Tags:       map[string]string{"team": "platform"}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.DeleteVM(ctx, "shared", 0) })
	config := c.ProviderHCL() + `
data "kvm_disk" "base" {
  id = "host-a/default/base-img"
}

data "kvm_vm" "shared" {
  host = "host-a"
  name = "shared"
}

resource "kvm_disk" "clone" {
  name         = "clone"
  host         = data.kvm_disk.base.host
  base_disk_id = data.kvm_disk.base.id
  size_mib     = data.kvm_disk.base.size_mib * 2
}

# The same VM, imported into this state: the data source must read as it.
import {
  to = kvm_vm.same
  id = "host-a/shared"
}
resource "kvm_vm" "same" {
  name        = "shared"
  host        = "host-a"
  vcpu        = 2
  memory_mib  = 96
  description = "owned elsewhere"
  disks              = [{ disk_id = "host-a/default/shared-root" }]
  network_interfaces = [{ network = "lan" }]
  cloud_init = {
    user_data = "#cloud-config\n"
    meta_data = "instance-id: shared\n"
  }
  tags = { team = "platform" }
}
`
	same := func(attr string) resource.TestCheckFunc {
		return resource.TestCheckResourceAttrPair("data.kvm_vm.shared", attr, "kvm_vm.same", attr)
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config:      c.ProviderHCL() + `data "kvm_vm" "x" {` + "\n" + `host = "host-a"` + "\n" + `name = "nope"` + "\n}\n",
				ExpectError: regexp.MustCompile(`Host host-a has no VM nope`),
			},
			{
				Config:      c.ProviderHCL() + `data "kvm_disk" "x" {` + "\n" + `id = "host-a/default"` + "\n}\n",
				ExpectError: regexp.MustCompile(`<host>/<pool>/<name>`),
			},
			{
				Config: config,
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("data.kvm_disk.base", tfjsonpath.New("size_mib"), knownvalue.Int64Exact(32)),
					statecheck.ExpectKnownValue("data.kvm_disk.base", tfjsonpath.New("pool"), knownvalue.StringExact("default")),
					statecheck.ExpectKnownValue("data.kvm_disk.base", tfjsonpath.New("name"), knownvalue.StringExact("base-img")),
					statecheck.ExpectKnownValue("kvm_disk.clone", tfjsonpath.New("base_disk_id"), knownvalue.StringExact("host-a/default/base-img")),
					statecheck.ExpectKnownValue("data.kvm_vm.shared", tfjsonpath.New("state"), knownvalue.StringExact("running")),
					statecheck.ExpectKnownValue("data.kvm_vm.shared", tfjsonpath.New("tags"), knownvalue.MapExact(map[string]knownvalue.Check{
						"team": knownvalue.StringExact("platform")})),
					statecheck.ExpectKnownValue("data.kvm_vm.shared", tfjsonpath.New("cloud_init"), knownvalue.ObjectExact(map[string]knownvalue.Check{
						"meta_data": knownvalue.StringExact("instance-id: shared\n"), "network_config": knownvalue.Null(),
						"user_data_wo_version": knownvalue.Null()})),
				},
				Check: resource.ComposeTestCheckFunc(
					same("id"), same("vcpu"), same("memory_mib"), same("max_memory_mib"), same("running"), same("autostart"),
					same("description"), same("disks.0.disk_id"), same("disks.0.bus"), same("network_interfaces.0.mac"),
					same("network_interfaces.0.model"), same("firmware"), same("guest_agent"), same("shutdown_timeout"),
					resource.TestCheckResourceAttrSet("data.kvm_disk.base", "path"),
					resource.TestCheckResourceAttr("data.kvm_disk.base", "format", "qcow2"),
				),
			},
		},
	})
}
