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
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// libvirt's test:///default starts with a domain "test" holding 2 vCPU and
// 8 GiB of a 3 GiB node: without overcommit every new VM would be "full".
var vmTestHostArgs = []string{"--memory-overcommit", "10"}

// vmTestDriverDomain is that built-in domain; it is not ours.
const vmTestDriverDomain = "test"

// testAccVMList lists the VMs of a host, without the test driver's own.
func testAccVMList(cl *client.Client) ([]api.VM, error) {
	vms, err := cl.ListVMs(context.Background())
	if err != nil {
		return nil, err
	}
	out := vms[:0]
	for _, vm := range vms {
		if vm.Name != vmTestDriverDomain {
			out = append(out, vm)
		}
	}
	return out, nil
}

// testAccVMClient returns a client for one harness host, to look at and
// tamper with VMs behind Terraform's back.
func testAccVMClient(t *testing.T, c *harness.Cluster, host string) *client.Client {
	t.Helper()
	h := c.Host(host)
	if h == nil {
		t.Fatalf("no host %s in the cluster", host)
	}
	cl, err := client.New(client.Options{Endpoint: h.URL, Token: c.Token})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// testAccVMPutNetwork realizes a network on a host (kvm_network is another
// resource; the VM only needs the bridge to exist).
func testAccVMPutNetwork(t *testing.T, cl *client.Client, name string) {
	t.Helper()
	if _, err := cl.PutNetwork(context.Background(), name, api.NetworkSpec{}); err != nil {
		t.Fatalf("creating network %s: %v", name, err)
	}
}

// testAccCheckVMDestroy checks that no domain is left on any host.
func testAccCheckVMDestroy(c *harness.Cluster) resource.TestCheckFunc {
	return func(_ *terraform.State) error {
		for _, h := range c.Hosts {
			cl, err := client.New(client.Options{Endpoint: h.URL, Token: c.Token})
			if err != nil {
				return err
			}
			vms, err := testAccVMList(cl)
			if err != nil {
				return err
			}
			if len(vms) > 0 {
				return fmt.Errorf("host %s still has %d VMs (first: %s)", h.Name, len(vms), vms[0].Name)
			}
		}
		return nil
	}
}

// testAccCheckVMOnHost reads the VM through the client and runs check on it.
func testAccCheckVMOnHost(cl *client.Client, name string, check func(*api.VM) error) resource.TestCheckFunc {
	return func(_ *terraform.State) error {
		vm, err := cl.GetVM(context.Background(), name)
		if err != nil {
			return fmt.Errorf("reading VM %s: %w", name, err)
		}
		return check(vm)
	}
}

// vmHCLString quotes s as an HCL string literal, escaping what HCL would
// interpret (quotes, backslashes, control characters, templates).
func vmHCLString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, "\\u%04x", r)
		case (r == '$' || r == '%') && i+1 < len(s) && s[i+1] == '{':
			b.WriteRune(r)
			b.WriteRune(r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func testAccVMBasicConfig(c *harness.Cluster) string {
	return c.ProviderHCL() + `
resource "kvm_disk" "root" {
  name     = "web-1-root"
  host     = "host-a"
  size_mib = 64
}

resource "kvm_disk" "data" {
  name     = "web-1-data"
  host     = "host-a"
  size_mib = 32
}

resource "kvm_vm" "web" {
  name           = "web-1"
  host           = "host-a"
  vcpu           = 2
  memory_mib     = 128
  max_memory_mib = 256
  cpu = {
    sockets = 1
    cores   = 2
  }
  disks = [
    { disk_id = kvm_disk.root.id },
    { disk_id = kvm_disk.data.id, bus = "sata" },
  ]
  network_interfaces = [{ network = "lan" }]
  cloud_init = {
    user_data = "#cloud-config\nhostname: web-1\n"
    meta_data = "instance-id: web-1\n"
  }
  description = ` + vmHCLString(`web <&"'> tier`) + `
  tags = {
    team = "web"
    env  = "test"
  }
}
`
}

func TestAccVM_basic(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs})
	cl := testAccVMClient(t, c, "host-a")
	testAccVMPutNetwork(t, cl, "lan")
	addr := "kvm_vm.web"
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy:             testAccCheckVMDestroy(c),
		Steps: []resource.TestStep{
			{
				Config: testAccVMBasicConfig(c),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("id"), knownvalue.StringRegexp(regexp.MustCompile(`^[0-9a-f-]{36}$`))),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("state"), knownvalue.StringExact("running")),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("running"), knownvalue.Bool(true)),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("autostart"), knownvalue.Bool(false)),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("shutdown_timeout"), knownvalue.Int64Exact(60)),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("migration"), knownvalue.StringExact("live")),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("description"), knownvalue.StringExact(`web <&"'> tier`)),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("cpu"), knownvalue.ObjectExact(map[string]knownvalue.Check{
						"mode": knownvalue.Null(), "sockets": knownvalue.Int64Exact(1), "cores": knownvalue.Int64Exact(2),
						"threads": knownvalue.Int64Exact(1), "pinning": knownvalue.Null(), "emulator_pinning": knownvalue.Null(),
					})),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("disks"), knownvalue.ListExact([]knownvalue.Check{
						knownvalue.ObjectExact(map[string]knownvalue.Check{"disk_id": knownvalue.StringExact("host-a/default/web-1-root"), "bus": knownvalue.StringExact("virtio"),
							"cache": knownvalue.StringExact("none"), "io": knownvalue.Null(), "discard": knownvalue.StringExact("unmap")}),
						knownvalue.ObjectExact(map[string]knownvalue.Check{"disk_id": knownvalue.StringExact("host-a/default/web-1-data"), "bus": knownvalue.StringExact("sata"),
							"cache": knownvalue.StringExact("none"), "io": knownvalue.Null(), "discard": knownvalue.StringExact("unmap")}),
					})),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("network_interfaces").AtSliceIndex(0).AtMapKey("mac"),
						knownvalue.StringRegexp(regexp.MustCompile(`^52:54:00(:[0-9a-f]{2}){3}$`))),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("network_interfaces").AtSliceIndex(0).AtMapKey("model"), knownvalue.StringExact("virtio")),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("tags"), knownvalue.MapExact(map[string]knownvalue.Check{
						"team": knownvalue.StringExact("web"), "env": knownvalue.StringExact("test"),
					})),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("cloud_init").AtMapKey("user_data"), knownvalue.StringExact("#cloud-config\nhostname: web-1\n")),
				},
				Check: testAccCheckVMOnHost(cl, "web-1", func(vm *api.VM) error {
					if vm.State != api.StateRunning || vm.VCPU != 2 || vm.MemoryMiB != 128 || vm.MaxMemoryMiB != 256 || len(vm.Disks) != 2 {
						return fmt.Errorf("unexpected VM on the host: %+v", vm)
					}
					if vm.Description != `web <&"'> tier` {
						return fmt.Errorf("description came back as %q", vm.Description)
					}
					return nil
				}),
			},
			{
				ResourceName:      addr,
				ImportState:       true,
				ImportStateId:     "host-a/web-1",
				ImportStateVerify: true,
				// The host never returns user data, only its hash: an
				// import reads it as the drift marker with that hash.
				ImportStateVerifyIgnore: []string{"cloud_init.user_data"},
				ImportStateCheck: func(s []*terraform.InstanceState) error {
					want := userDataDriftMarker + api.UserDataHash("#cloud-config\nhostname: web-1\n")
					if got := s[0].Attributes["cloud_init.user_data"]; got != want {
						return fmt.Errorf("imported user_data %q, want %q", got, want)
					}
					return nil
				},
			},
		},
	})
}

func testAccVMSmallConfig(c *harness.Cluster, name, extra string) string {
	return c.ProviderHCL() + fmt.Sprintf(`
resource "kvm_vm" "test" {
  name = %q
  host = "host-a"
%s
}
`, name, extra)
}

func TestAccVM_update(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs})
	cl := testAccVMClient(t, c, "host-a")
	addr := "kvm_vm.test"
	var uuid string
	keepUUID := testAccCheckVMOnHost(cl, "upd", func(vm *api.VM) error {
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
				Config: testAccVMSmallConfig(c, "upd", "vcpu = 1\nmemory_mib = 128\nmax_memory_mib = 512\ntags = { a = \"1\" }"),
				Check:  keepUUID,
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("state"), knownvalue.StringExact("running")),
				},
			},
			{
				// Memory within the ceiling, tags and description: live.
				Config: testAccVMSmallConfig(c, "upd", "vcpu = 1\nmemory_mib = 384\nmax_memory_mib = 512\ntags = { a = \"2\" }\ndescription = \"resized\""),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate),
					// The state is known in the plan: nothing restarts.
					plancheck.ExpectKnownValue(addr, tfjsonpath.New("state"), knownvalue.StringExact("running")),
				}},
				Check: resource.ComposeAggregateTestCheckFunc(keepUUID, testAccCheckVMOnHost(cl, "upd", func(vm *api.VM) error {
					if vm.MemoryMiB != 384 || vm.State != api.StateRunning || vm.Tags["a"] != "2" {
						return fmt.Errorf("memory not applied live: %+v", vm)
					}
					return nil
				})),
			},
			{
				// vcpu needs a restart: in place, same domain.
				Config: testAccVMSmallConfig(c, "upd", "vcpu = 2\nmemory_mib = 384\nmax_memory_mib = 512\ntags = { a = \"2\" }\ndescription = \"resized\""),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate),
					plancheck.ExpectUnknownValue(addr, tfjsonpath.New("state")),
				}},
				Check: resource.ComposeAggregateTestCheckFunc(keepUUID, testAccCheckVMOnHost(cl, "upd", func(vm *api.VM) error {
					if vm.VCPU != 2 || vm.State != api.StateRunning {
						return fmt.Errorf("vcpu change not applied: %+v", vm)
					}
					return nil
				})),
			},
			{
				Config: testAccVMSmallConfig(c, "upd", "vcpu = 2\nmemory_mib = 384\nmax_memory_mib = 512\ntags = { a = \"2\" }\ndescription = \"resized\"\nrunning = false"),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("state"), knownvalue.StringExact("shutoff")),
				},
				Check: resource.ComposeAggregateTestCheckFunc(keepUUID, testAccCheckVMOnHost(cl, "upd", func(vm *api.VM) error {
					if vm.State != api.StateShutoff {
						return fmt.Errorf("VM not stopped: state %s", vm.State)
					}
					return nil
				})),
			},
			{
				// Without max_memory_mib the ceiling follows memory_mib.
				Config: testAccVMSmallConfig(c, "upd", "vcpu = 2\nmemory_mib = 256\nrunning = true"),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("state"), knownvalue.StringExact("running")),
					statecheck.ExpectKnownValue(addr, tfjsonpath.New("max_memory_mib"), knownvalue.Int64Exact(512)),
				},
				Check: keepUUID,
			},
		},
	})
}

func TestAccVM_disappears(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs})
	cl := testAccVMClient(t, c, "host-a")
	cfg := testAccVMSmallConfig(c, "gone", "vcpu = 1\nmemory_mib = 64")
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy:             testAccCheckVMDestroy(c),
		Steps: []resource.TestStep{
			{
				Config: cfg,
				Check: func(*terraform.State) error {
					return cl.DeleteVM(context.Background(), "gone", 0)
				},
				ExpectNonEmptyPlan: true,
			},
			{
				Config: cfg,
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_vm.test", plancheck.ResourceActionCreate),
				}},
			},
		},
	})
}

func TestAccVM_drift(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs})
	cl := testAccVMClient(t, c, "host-a")
	cfg := testAccVMSmallConfig(c, "drift", "vcpu = 1\nmemory_mib = 64\ntags = { owner = \"tf\" }")
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy:             testAccCheckVMDestroy(c),
		Steps: []resource.TestStep{
			{Config: cfg},
			{
				PreConfig: func() {
					vm, err := cl.GetVM(context.Background(), "drift")
					if err != nil {
						t.Fatal(err)
					}
					spec := vm.VMSpec
					spec.VCPU = 2
					spec.Tags = map[string]string{"owner": "someone-else"}
					if _, err := cl.UpdateVM(context.Background(), "drift", spec); err != nil {
						t.Fatal(err)
					}
				},
				Config: cfg,
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_vm.test", plancheck.ResourceActionUpdate),
					plancheck.ExpectKnownValue("kvm_vm.test", tfjsonpath.New("vcpu"), knownvalue.Int64Exact(1)),
				}},
				Check: testAccCheckVMOnHost(cl, "drift", func(vm *api.VM) error {
					if vm.VCPU != 1 || vm.Tags["owner"] != "tf" {
						return fmt.Errorf("drift not corrected: %+v", vm)
					}
					return nil
				}),
			},
		},
	})
}

func TestAccVM_hostileNames(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs})
	cl := testAccVMClient(t, c, "host-a")
	names := []string{"../x</name>", "a\x00b", strings.Repeat("a", 300), "web 1", "a/b", "-lead", "é", ""}
	var steps []resource.TestStep
	for _, n := range names {
		steps = append(steps, resource.TestStep{
			Config: c.ProviderHCL() + `
resource "kvm_vm" "bad" {
  name       = ` + vmHCLString(n) + `
  host       = "host-a"
  vcpu       = 1
  memory_mib = 64
}
`,
			ExpectError: regexp.MustCompile(`Invalid VM Name`),
		})
	}
	// Other plan-time checks.
	bad := map[string]string{
		`network_interfaces = [{ network = "lan", mac = "52:54:00:zz:00:01" }]`: `MAC address`,
		`disks = [{ disk_id = "host-a/default/x", bus = "usb" }]`:               `bus`,
		`network_interfaces = [{ network = "lan", model = "ne2k" }]`:            `model`,
		`migration = "teleport"`:                     `migration`,
		`shutdown_timeout = 7200`:                    `shutdown_timeout`,
		`disks = [{ disk_id = "host-b/default/x" }]`: `Disk on Another Host`,
		`disks = [{ disk_id = "../../etc/passwd" }]`: `Invalid Disk ID`,
		`max_memory_mib = 32`:                        `Invalid Memory Ceiling`,
		`cpu = { sockets = 2, cores = 2 }`:           `Invalid CPU Topology`,
		`cpu = { pinning = ["0", "1"] }`:             `Invalid CPU Pinning`,
		// The host's own rules (internal/api), which the plan once let through.
		`cpu = { pinning = ["3-1"] }`:                        `is not a host CPU set`,
		`max_memory_mib = 99999999999`:                       `max_memory_mib value must be between 16 and 16777216`,
		`tags = { "` + strings.Repeat("é", 65) + `" = "x" }`: `(?s)tag key .*is invalid`,
		`host = "host-z"`:                                    `Unknown Host`,
	}
	for extra, msg := range bad {
		hostLine := `host = "host-a"`
		if strings.HasPrefix(extra, "host =") {
			hostLine = ""
		}
		steps = append(steps, resource.TestStep{
			Config: c.ProviderHCL() + `
resource "kvm_vm" "bad" {
  name       = "ok"
  ` + hostLine + `
  vcpu       = 1
  memory_mib = 64
  ` + extra + `
}
`,
			ExpectError: regexp.MustCompile(msg),
		})
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps:                    steps,
	})
	vms, err := testAccVMList(cl)
	if err != nil {
		t.Fatal(err)
	}
	if len(vms) != 0 {
		t.Fatalf("a refused plan created %d VMs (first %q)", len(vms), vms[0].Name)
	}
}

func TestAccVM_admission(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: []string{"--memory-overcommit", "0.0001"}})
	cl := testAccVMClient(t, c, "host-a")
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{{
			Config:      testAccVMSmallConfig(c, "big", "vcpu = 1\nmemory_mib = 4096"),
			ExpectError: regexp.MustCompile(`(?s)Host Refused VM.*host-a.*full`),
		}},
	})
	vms, err := testAccVMList(cl)
	if err != nil {
		t.Fatal(err)
	}
	if len(vms) != 0 {
		t.Fatalf("a refused VM exists: %+v", vms)
	}
}

// vmRestartAttributes decides the "VM Will Restart" warning.
func TestVMRestartAttributes(t *testing.T) {
	ctx := context.Background()
	base := vmModel{
		VCPU: types.Int64Value(1), MemoryMiB: types.Int64Value(128), MaxMemoryMiB: types.Int64Value(512),
		CPU: types.ObjectNull(vmCPUAttrTypes), Disks: types.ListNull(types.ObjectType{AttrTypes: vmDiskAttrTypes}),
		NetworkInterfaces: types.ListNull(types.ObjectType{AttrTypes: vmNICAttrTypes}), CloudInit: types.ObjectNull(vmCloudInitAttrTypes),
		Tags: types.MapNull(types.StringType), Description: types.StringNull(),
	}
	live := base
	live.MemoryMiB = types.Int64Value(256)
	live.Description = types.StringValue("x")
	if got := vmRestartAttributes(ctx, base, live); len(got) != 0 {
		t.Errorf("memory within max and description: restart for %v, want none", got)
	}
	restart := base
	restart.VCPU = types.Int64Value(2)
	restart.MaxMemoryMiB = types.Int64Value(1024)
	restart.CloudInit = types.ObjectValueMust(vmCloudInitAttrTypes, map[string]attr.Value{
		"user_data": types.StringValue("#cloud-config"), "meta_data": types.StringNull(), "network_config": types.StringNull(),
		"user_data_wo": types.StringNull(), "user_data_wo_version": types.Int64Null(),
	})
	got := vmRestartAttributes(ctx, base, restart)
	if strings.Join(got, ",") != "cloud_init,max_memory_mib,vcpu" {
		t.Errorf("restart attributes = %v", got)
	}

	// Appending a NIC is a hot-add; replacing or removing one restarts.
	nic := func(network string) attr.Value {
		return types.ObjectValueMust(vmNICAttrTypes, map[string]attr.Value{
			"network": types.StringValue(network), "mac": types.StringValue("52:54:00:00:00:0" + network[len(network)-1:]), "model": types.StringValue("virtio"),
			"ipv4_address": types.StringNull(), "addresses": types.ListNull(types.StringType), "queues": types.Int64Value(1),
		})
	}
	nics := func(vs ...attr.Value) types.List {
		return types.ListValueMust(types.ObjectType{AttrTypes: vmNICAttrTypes}, vs)
	}
	one, two, other := base, base, base
	one.NetworkInterfaces = nics(nic("n1"))
	two.NetworkInterfaces = nics(nic("n1"), nic("n2"))
	other.NetworkInterfaces = nics(nic("n3"))
	if got := vmRestartAttributes(ctx, one, two); len(got) != 0 {
		t.Errorf("appending a NIC: restart for %v, want none (hot-add)", got)
	}
	if got := vmRestartAttributes(ctx, two, one); strings.Join(got, ",") != "network_interfaces" {
		t.Errorf("removing a NIC: restart for %v, want network_interfaces", got)
	}
	if got := vmRestartAttributes(ctx, one, other); strings.Join(got, ",") != "network_interfaces" {
		t.Errorf("replacing a NIC: restart for %v, want network_interfaces", got)
	}
	// As on the host: a NIC appended together with a vCPU change is applied
	// by the same restart, not hot-added.
	grow := two
	grow.VCPU = types.Int64Value(2)
	if got := vmRestartAttributes(ctx, one, grow); strings.Join(got, ",") != "network_interfaces,vcpu" {
		t.Errorf("appending a NIC and changing vcpu: restart for %v, want network_interfaces,vcpu", got)
	}

	// A disk whose ID is known only at apply (a kvm_disk being created) is a
	// change, also when appended after the same disks.
	disk := func(id types.String) attr.Value {
		return types.ObjectValueMust(vmDiskAttrTypes, map[string]attr.Value{"disk_id": id, "bus": types.StringValue("virtio"),
			"cache": types.StringValue("none"), "io": types.StringNull(), "discard": types.StringValue("unmap")})
	}
	disks := func(vs ...attr.Value) types.List {
		return types.ListValueMust(types.ObjectType{AttrTypes: vmDiskAttrTypes}, vs)
	}
	withDisk, withMore := base, base
	withDisk.Disks = disks(disk(types.StringValue("host-a/default/a")))
	withMore.Disks = disks(disk(types.StringValue("host-a/default/a")), disk(types.StringUnknown()))
	if got := vmRestartAttributes(ctx, withDisk, withMore); strings.Join(got, ",") != "disks" {
		t.Errorf("appending a disk of unknown ID: restart for %v, want disks", got)
	}
	if got := vmRestartAttributes(ctx, withDisk, withDisk); len(got) != 0 {
		t.Errorf("same disk: restart for %v, want none", got)
	}
	// guest_agent adds or removes a device: one restart, by the host's rule.
	noAgent := base
	noAgent.GuestAgent = types.BoolValue(false)
	if got := vmRestartAttributes(ctx, base, noAgent); strings.Join(got, ",") != "guest_agent" {
		t.Errorf("guest_agent off: restart for %v, want guest_agent", got)
	}
	unknownCPU := base
	unknownCPU.CPU = types.ObjectUnknown(vmCPUAttrTypes)
	if got := vmRestartAttributes(ctx, base, unknownCPU); strings.Join(got, ",") != "cpu" {
		t.Errorf("unknown cpu: restart for %v, want cpu", got)
	}
}

func TestVMHCLString(t *testing.T) {
	for in, want := range map[string]string{
		`a"b`: `"a\"b"`, "a\x00b": `"a\u0000b"`, "${x}": `"$${x}"`, `c:\`: `"c:\\"`,
	} {
		if got := vmHCLString(in); got != want {
			t.Errorf("vmHCLString(%q) = %s, want %s", in, got, want)
		}
	}
}
