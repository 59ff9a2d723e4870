package kvm

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/types"
	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// testAccVMDevicesConfig is a VM with every device attribute; body is
// spliced into kvm_vm (graphics, rng), disk and nic into its lists.
func testAccVMDevicesConfig(c *harness.Cluster, vm, disk0, disk1, nic string) string {
	return c.ProviderHCL() + fmt.Sprintf(`
resource "kvm_disk" "root" {
  name     = "dev-root"
  host     = "host-a"
  size_mib = 64
}

resource "kvm_disk" "data" {
  name     = "dev-data"
  host     = "host-a"
  size_mib = 32
}

resource "kvm_vm" "dev" {
  name       = "dev-1"
  host       = "host-a"
  vcpu       = 2
  memory_mib = 128
  %s
  disks = [
    { disk_id = kvm_disk.root.id, %s },
    { disk_id = kvm_disk.data.id, bus = "scsi", %s },
  ]
  network_interfaces = [{ network = "lan", %s }]
}
`, vm, disk0, disk1, nic)
}

func TestAccVM_devices(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs})
	cl := testAccVMClient(t, c, "host-a")
	testAccVMPutNetwork(t, cl, "lan")
	addr := "kvm_vm.dev"
	var uuid string
	keepUUID := testAccCheckVMOnHost(cl, "dev-1", func(vm *api.VM) error {
		if uuid == "" {
			uuid = vm.UUID
		}
		if vm.UUID != uuid {
			return fmt.Errorf("the VM was re-created: UUID %s, was %s", vm.UUID, uuid)
		}
		return nil
	})
	vnc := `graphics = { type = "vnc", password_wo = "s3cret", password_wo_version = 1 }`
	first := testAccVMDevicesConfig(c, vnc, `cache = "writeback", io = "io_uring", discard = "ignore"`,
		`cache = "none", io = "native"`, `queues = 2`)
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy:             testAccCheckVMDestroy(c),
		Steps: []resource.TestStep{
			{
				Config: first,
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("rng"), knownvalue.Bool(true)),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("graphics"), knownvalue.ObjectExact(map[string]knownvalue.Check{
						"type": knownvalue.StringExact("vnc"), "listen": knownvalue.StringExact("127.0.0.1"),
						"password_wo": knownvalue.Null(), "password_wo_version": knownvalue.Int64Exact(1),
						// The test driver assigns no port.
						"port": knownvalue.Int64Exact(-1), "address": knownvalue.Null(),
					})),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("disks"), knownvalue.ListExact([]knownvalue.Check{
						knownvalue.ObjectPartial(map[string]knownvalue.Check{"bus": knownvalue.StringExact("virtio"),
							"cache": knownvalue.StringExact("writeback"), "io": knownvalue.StringExact("io_uring"), "discard": knownvalue.StringExact("ignore")}),
						knownvalue.ObjectPartial(map[string]knownvalue.Check{"bus": knownvalue.StringExact("scsi"),
							"cache": knownvalue.StringExact("none"), "io": knownvalue.StringExact("native"), "discard": knownvalue.StringExact("unmap")}),
					})),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("network_interfaces").AtSliceIndex(0).AtMapKey("queues"), knownvalue.Int64Exact(2)),
				},
				Check: resource.ComposeAggregateTestCheckFunc(keepUUID, testAccCheckVMOnHost(cl, "dev-1", func(vm *api.VM) error {
					g := vm.Graphics
					if g == nil || g.Type != "vnc" || g.Password != "" || !vm.RNGEnabled() || vm.Interfaces[0].Queues != 2 ||
						vm.Disks[1].Bus != "scsi" || vm.Disks[1].IO != "native" || vm.Disks[0].Cache != "writeback" {
						return fmt.Errorf("unexpected VM on the host: %+v graphics %+v", vm.VMSpec, g)
					}
					return nil
				})),
			},
			{
				ResourceName:      addr,
				ImportState:       true,
				ImportStateId:     "host-a/dev-1",
				ImportStateVerify: true,
				// The version is the configuration's; the host has none.
				ImportStateVerifyIgnore: []string{"graphics.password_wo_version"},
			},
			{
				// A new password: live, no restart.
				Config: strings.Replace(first, "password_wo_version = 1", "password_wo_version = 2", 1),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate),
					plancheck.ExpectKnownValue(addr, tfjsonpath.New("state"), knownvalue.StringExact("running")),
				}},
				Check: keepUUID,
			},
			{
				// Every device changes: one restart in place.
				Config: testAccVMDevicesConfig(c, `graphics = { type = "spice", listen = "::1" }`+"\n  rng = false",
					`cache = "unsafe"`, `discard = "ignore"`, `queues = 1`),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate),
					plancheck.ExpectUnknownValue(addr, tfjsonpath.New("state")),
				}},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("rng"), knownvalue.Bool(false)),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("graphics").AtMapKey("listen"), knownvalue.StringExact("::1")),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("disks").AtSliceIndex(0).AtMapKey("io"), knownvalue.Null()),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("network_interfaces").AtSliceIndex(0).AtMapKey("queues"), knownvalue.Int64Exact(1)),
				},
				Check: resource.ComposeAggregateTestCheckFunc(keepUUID, testAccCheckVMOnHost(cl, "dev-1", func(vm *api.VM) error {
					if vm.Graphics == nil || vm.Graphics.Type != "spice" || vm.RNGEnabled() || vm.Disks[0].Cache != "unsafe" || vm.Disks[1].Discard != "ignore" {
						return fmt.Errorf("devices not changed: %+v", vm.VMSpec)
					}
					return nil
				})),
			},
			{
				// Removing the console: a restart, still in place.
				Config: testAccVMDevicesConfig(c, "", `cache = "unsafe"`, `discard = "ignore"`, `queues = 1`),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate),
				}},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("graphics"), knownvalue.Null()),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("rng"), knownvalue.Bool(true)),
				},
				Check: keepUUID,
			},
		},
	})
}

// What QEMU or the protocol refuses fails the plan, naming the attribute.
func TestAccVM_devicesInvalid(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs})
	var steps []resource.TestStep
	for _, tc := range []struct{ vm, disk0, nic, want string }{
		{"", `cache = "writeback", io = "native"`, "", `io = "native" needs cache`},
		{"", "", "queues = 3", `more than the VM's 2 vCPUs`},
		{"", "", `model = "e1000", queues = 2`, `needs model = "virtio"`},
		{`graphics = { type = "vnc", listen = "localhost" }`, "", "", `not an IP address`},
		{`graphics = { type = "vnc", password_wo = "123456789", password_wo_version = 1 }`, "", "", `at most 8`},
		{`graphics = { type = "vnc", password_wo = "x" }`, "", "", `password_wo_version`},
		{"", `cache = "writethrough"`, "", `cache`},
		{"", `io = "aio"`, "", `io`},
		{"", "", "queues = 0", `queues`},
	} {
		steps = append(steps, resource.TestStep{
			Config:      testAccVMDevicesConfig(c, tc.vm, tc.disk0, "", tc.nic),
			PlanOnly:    true,
			ExpectError: regexp.MustCompile(regexp.QuoteMeta(tc.want)),
		})
	}
	resource.Test(t, resource.TestCase{ProtoV6ProviderFactories: testAccProtoV6ProviderFactories, Steps: steps})
}

// Each device attribute is a restart by the host's rule; the console
// password (its version) is not.
func TestVMDevicesRestartAttributes(t *testing.T) {
	ctx := context.Background()
	graphics := func(typ, listen string, version int64) types.Object {
		return types.ObjectValueMust(vmGraphicsAttrTypes, map[string]attr.Value{
			"type": types.StringValue(typ), "listen": types.StringValue(listen), "password_wo": types.StringNull(),
			"password_wo_version": types.Int64Value(version), "port": types.Int64Value(5900), "address": types.StringValue(listen + ":5900"),
		})
	}
	disk := func(cache, io, discard string) types.List {
		ioV := types.StringNull()
		if io != "" {
			ioV = types.StringValue(io)
		}
		return types.ListValueMust(types.ObjectType{AttrTypes: vmDiskAttrTypes}, []attr.Value{types.ObjectValueMust(vmDiskAttrTypes, map[string]attr.Value{
			"disk_id": types.StringValue("host-a/default/a"), "bus": types.StringValue("scsi"),
			"cache": types.StringValue(cache), "io": ioV, "discard": types.StringValue(discard),
		})})
	}
	nic := func(queues int64) types.List {
		return types.ListValueMust(types.ObjectType{AttrTypes: vmNICAttrTypes}, []attr.Value{types.ObjectValueMust(vmNICAttrTypes, map[string]attr.Value{
			"network": types.StringValue("lan"), "mac": types.StringValue("52:54:00:00:00:01"), "model": types.StringValue("virtio"),
			"ipv4_address": types.StringNull(), "addresses": types.ListNull(types.StringType), "queues": types.Int64Value(queues),
		})})
	}
	base := vmModel{
		VCPU: types.Int64Value(2), MemoryMiB: types.Int64Value(128), MaxMemoryMiB: types.Int64Value(128),
		CPU: types.ObjectNull(vmCPUAttrTypes), Disks: disk("none", "", "unmap"), NetworkInterfaces: nic(1),
		CloudInit: types.ObjectNull(vmCloudInitAttrTypes), Tags: types.MapNull(types.StringType),
		vmDevicesModel: vmDevicesModel{Graphics: graphics("vnc", "127.0.0.1", 1), RNG: types.BoolValue(true)},
	}
	for _, tc := range []struct {
		name string
		mod  func(*vmModel)
		want string
	}{
		{"password version", func(m *vmModel) { m.Graphics = graphics("vnc", "127.0.0.1", 2) }, ""},
		{"console type", func(m *vmModel) { m.Graphics = graphics("spice", "127.0.0.1", 1) }, "graphics"},
		{"console listen", func(m *vmModel) { m.Graphics = graphics("vnc", "0.0.0.0", 1) }, "graphics"},
		{"no console", func(m *vmModel) { m.Graphics = types.ObjectNull(vmGraphicsAttrTypes) }, "graphics"},
		{"rng", func(m *vmModel) { m.RNG = types.BoolValue(false) }, "rng"},
		{"cache", func(m *vmModel) { m.Disks = disk("writeback", "", "unmap") }, "disks"},
		{"io", func(m *vmModel) { m.Disks = disk("none", "native", "unmap") }, "disks"},
		{"discard", func(m *vmModel) { m.Disks = disk("none", "", "ignore") }, "disks"},
		{"queues", func(m *vmModel) { m.NetworkInterfaces = nic(2) }, "network_interfaces"},
	} {
		plan := base
		tc.mod(&plan)
		if got := strings.Join(vmRestartAttributes(ctx, base, plan), ","); got != tc.want {
			t.Errorf("%s: restart for %q, want %q", tc.name, got, tc.want)
		}
	}
}
