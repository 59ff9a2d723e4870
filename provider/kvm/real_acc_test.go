package kvm

import (
	"context"
	"fmt"
	"os"
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
	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

// Real-stack acceptance tests: the real terraform binary drives the
// provider, which talks HTTP to a kvm-hostd process running on
// qemu:///system (and Open vSwitch). The VMs have no OS: 64 MiB, 1 vCPU,
// shutdown_timeout = 0 (nothing would answer an ACPI shutdown).

// realLifecycleConfig is the configuration of TestAccReal_diskVMSnapshotLifecycle.
type realLifecycleConfig struct {
	prefix      string
	cloneMiB    int
	vcpu        int
	memoryMiB   int
	trigger     string // HCL expression for revert_trigger
	withScratch bool
}

func (r realLifecycleConfig) hcl(c *harness.Cluster) string {
	scratch := ""
	if r.withScratch {
		scratch = fmt.Sprintf(`
# Not attached to anything: deleted out of band in the drift step.
resource "kvm_disk" "scratch" {
  name     = "%[1]sscratch"
  host     = "host-a"
  size_mib = 64
}
`, r.prefix)
	}
	return c.ProviderHCL() + fmt.Sprintf(`
resource "kvm_disk" "base" {
  name     = "%[1]sbase"
  host     = "host-a"
  size_mib = 64
}

resource "kvm_disk" "clone" {
  name         = "%[1]sclone"
  host         = "host-a"
  base_disk_id = kvm_disk.base.id
  size_mib     = %[2]d
}

resource "kvm_vm" "vm" {
  name             = "%[1]svm"
  host             = "host-a"
  vcpu             = %[3]d
  memory_mib       = %[4]d
  max_memory_mib   = 128
  shutdown_timeout = 0
  disks            = [{ disk_id = kvm_disk.clone.id }]
}

resource "kvm_snapshot" "snap" {
  vm_id          = "host-a/${kvm_vm.vm.name}"
  name           = "s1"
  description    = "before changes"
  include_memory = true
  revert_trigger = %[5]s
}
%[6]s`, r.prefix, r.cloneMiB, r.vcpu, r.memoryMiB, r.trigger, scratch)
}

// realCheckDomainType checks the domain type the host's probe reports: kvm
// or qemu, and qemu (TCG) where there is no /dev/kvm. Where there is one,
// the probe may still find that KVM does not run guests, or runs them
// slower than TCG, so either is right.
func realCheckDomainType(h *api.Host) error {
	if h.DomainType != "kvm" && h.DomainType != "qemu" {
		return fmt.Errorf("host reports domain type %q (%s)", h.DomainType, h.Probe)
	}
	if _, err := os.Stat("/dev/kvm"); err != nil && h.DomainType != "qemu" {
		return fmt.Errorf("no /dev/kvm, yet the host reports domain type %q", h.DomainType)
	}
	if h.CPUMode == "" || h.Probe == "" {
		return fmt.Errorf("host reports no probed cpu mode or probe reason: %+v", h)
	}
	return nil
}

func TestAccReal_diskVMSnapshotLifecycle(t *testing.T) {
	prefix := realPrefix("rl")
	c, cl := realStart(t, prefix)
	ctx := context.Background()
	vmName, cloneName, scratchName := prefix+"vm", prefix+"clone", prefix+"scratch"
	cfg := realLifecycleConfig{prefix: prefix, cloneMiB: 64, vcpu: 1, memoryMiB: 64, trigger: "null", withScratch: true}

	// uuid is the domain's identity from the first apply; every in-place
	// change must keep it.
	var uuid string
	sameDomain := func(want func(*api.VM) error) resource.TestCheckFunc {
		return testAccCheckVMOnHost(cl, vmName, func(vm *api.VM) error {
			if uuid == "" {
				uuid = vm.UUID
			}
			if vm.UUID != uuid {
				return fmt.Errorf("domain %s was re-created: UUID %s, was %s", vmName, vm.UUID, uuid)
			}
			if vm.State != api.StateRunning {
				return fmt.Errorf("domain %s is %s, want running", vmName, vm.State)
			}
			return want(vm)
		})
	}
	volumeSize := func(name string, mib int64) resource.TestCheckFunc {
		return func(*terraform.State) error {
			v, err := cl.GetVolume(ctx, "default", name)
			if err != nil {
				return err
			}
			if v.SizeMiB != mib {
				return fmt.Errorf("volume %s is %d MiB on the host, want %d", name, v.SizeMiB, mib)
			}
			return nil
		}
	}

	withCfg := func(f func(*realLifecycleConfig)) string {
		n := cfg
		f(&n)
		return n.hcl(c)
	}
	grown := func(r *realLifecycleConfig) { r.trigger = `"r1"`; r.cloneMiB = 96; r.memoryMiB = 96 }
	final := func(r *realLifecycleConfig) { grown(r); r.vcpu = 2 }

	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy:             realCheckNothingLeft(cl, prefix),
		Steps: []resource.TestStep{
			{
				Config: cfg.hcl(c),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_vm.vm", tfjsonpath.New("state"), knownvalue.StringExact("running")),
					statecheck.ExpectKnownValue("kvm_vm.vm", tfjsonpath.New("id"), knownvalue.StringRegexp(regexp.MustCompile(`^[0-9a-f-]{36}$`))),
					statecheck.ExpectKnownValue("kvm_disk.clone", tfjsonpath.New("base_disk_id"), knownvalue.StringExact("host-a/default/"+prefix+"base")),
					statecheck.ExpectKnownValue("kvm_disk.clone", tfjsonpath.New("size_mib"), knownvalue.Int64Exact(64)),
					statecheck.ExpectKnownValue("kvm_snapshot.snap", tfjsonpath.New("id"), knownvalue.StringExact("host-a/"+vmName+"/s1")),
				},
				Check: resource.ComposeAggregateTestCheckFunc(
					sameDomain(func(vm *api.VM) error {
						if vm.VCPU != 1 || vm.MemoryMiB != 64 || vm.MaxMemoryMiB != 128 || len(vm.Disks) != 1 || vm.Disks[0].Volume != cloneName {
							return fmt.Errorf("unexpected domain on the host: %+v", vm.VMSpec)
						}
						return nil
					}),
					func(*terraform.State) error {
						h, err := cl.Host(ctx)
						if err != nil {
							return err
						}
						if err := realCheckDomainType(h); err != nil {
							return err
						}
						want := h.DomainType
						// And libvirt itself, not only kvm-hostd's view.
						out, ok, err := realVirsh("dumpxml", vmName)
						if !ok {
							return nil
						}
						if err != nil {
							return err
						}
						if !strings.Contains(out, "<domain type='"+want+"'") {
							return fmt.Errorf("domain %s is not of type %s:\n%.300s", vmName, want, out)
						}
						return nil
					},
					func(*terraform.State) error {
						v, err := cl.GetVolumeUsage(ctx, "default", prefix+"base")
						if err != nil {
							return err
						}
						if len(v.Children) != 1 || v.Children[0] != cloneName {
							return fmt.Errorf("base volume children = %v, want [%s]", v.Children, cloneName)
						}
						s, err := cl.GetSnapshot(ctx, vmName, "s1")
						if err != nil {
							return err
						}
						if !s.Current || s.State != "running" {
							return fmt.Errorf("snapshot s1: %+v, want the current snapshot of a running domain", s)
						}
						return nil
					},
					realCheckSnapshotMemory("kvm_snapshot.snap", vmName, "s1"),
				),
			},
			{
				ResourceName:      "kvm_disk.clone",
				ImportState:       true,
				ImportStateId:     "host-a/default/" + cloneName,
				ImportStateVerify: true,
				// timeouts is a block of the configuration, never stored on
				// the host. allocated_mib is what the clone occupies now: a
				// running VM (and the snapshot's saved state, kept inside
				// the qcow2) keeps writing to it between two reads.
				ImportStateVerifyIgnore: []string{"timeouts", "allocated_mib"},
			},
			{
				ResourceName:            "kvm_vm.vm",
				ImportState:             true,
				ImportStateId:           "host-a/" + vmName,
				ImportStateVerify:       true,
				ImportStateVerifyIgnore: []string{"timeouts"},
			},
			{
				ResourceName:      "kvm_snapshot.snap",
				ImportState:       true,
				ImportStateId:     "host-a/" + vmName + "/s1",
				ImportStateVerify: true,
				// revert_trigger is a user-chosen value that only says "revert
				// when this changes"; the host has no record of it.
				ImportStateVerifyIgnore: []string{"timeouts", "revert_trigger"},
			},
			{
				// Revert the running domain to s1, in place.
				Config: withCfg(func(r *realLifecycleConfig) { r.trigger = `"r1"` }),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_snapshot.snap", plancheck.ResourceActionUpdate),
					plancheck.ExpectResourceAction("kvm_vm.vm", plancheck.ResourceActionNoop),
				}},
				Check: resource.ComposeAggregateTestCheckFunc(
					testAccCheckSnapshotCurrent(cl, vmName, "s1"),
					sameDomain(func(*api.VM) error { return nil }),
				),
			},
			{
				// Grow the attached clone online and the memory within
				// max_memory_mib live: no restart, same domain.
				Config: withCfg(grown),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_disk.clone", plancheck.ResourceActionUpdate),
					plancheck.ExpectResourceAction("kvm_vm.vm", plancheck.ResourceActionUpdate),
					plancheck.ExpectKnownValue("kvm_vm.vm", tfjsonpath.New("state"), knownvalue.StringExact("running")),
				}},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_disk.clone", tfjsonpath.New("size_mib"), knownvalue.Int64Exact(96)),
					statecheck.ExpectKnownValue("kvm_vm.vm", tfjsonpath.New("memory_mib"), knownvalue.Int64Exact(96)),
				},
				Check: resource.ComposeAggregateTestCheckFunc(
					volumeSize(cloneName, 96),
					sameDomain(func(vm *api.VM) error {
						if vm.MemoryMiB != 96 {
							return fmt.Errorf("memory is %d MiB on the host, want 96", vm.MemoryMiB)
						}
						return nil
					}),
					func(*terraform.State) error {
						// The running QEMU sees the new size (blockresize), not
						// only the file on disk.
						out, ok, err := realVirsh("domblkinfo", vmName, "vda", "--human")
						if !ok {
							return nil
						}
						if err != nil {
							return err
						}
						if !regexp.MustCompile(`Capacity:\s+96\.000 MiB`).MatchString(out) {
							return fmt.Errorf("QEMU does not see the grown disk:\n%s", out)
						}
						return nil
					},
				),
			},
			{
				// vcpu needs one restart: updated in place, running after.
				Config: withCfg(final),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_vm.vm", plancheck.ResourceActionUpdate),
					plancheck.ExpectUnknownValue("kvm_vm.vm", tfjsonpath.New("state")),
				}},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_vm.vm", tfjsonpath.New("state"), knownvalue.StringExact("running")),
				},
				Check: sameDomain(func(vm *api.VM) error {
					if vm.VCPU != 2 || vm.MemoryMiB != 96 {
						return fmt.Errorf("domain after restart: %+v, want 2 vCPU and 96 MiB", vm.VMSpec)
					}
					return nil
				}),
			},
			{
				// Out-of-band changes: the vCPU count through the host API,
				// and the detached scratch disk deleted.
				PreConfig: func() {
					vm, err := cl.GetVM(ctx, vmName)
					if err != nil {
						t.Fatal(err)
					}
					spec := vm.VMSpec
					spec.VCPU = 1
					if _, err := cl.UpdateVM(ctx, vmName, spec); err != nil {
						t.Fatal(err)
					}
					if err := cl.DeleteVolume(ctx, "default", scratchName); err != nil {
						t.Fatal(err)
					}
				},
				Config: withCfg(final),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectNonEmptyPlan(),
					plancheck.ExpectResourceAction("kvm_vm.vm", plancheck.ResourceActionUpdate),
					plancheck.ExpectKnownValue("kvm_vm.vm", tfjsonpath.New("vcpu"), knownvalue.Int64Exact(2)),
					plancheck.ExpectResourceAction("kvm_disk.scratch", plancheck.ResourceActionCreate),
					plancheck.ExpectResourceAction("kvm_disk.clone", plancheck.ResourceActionNoop),
				}},
				Check: resource.ComposeAggregateTestCheckFunc(
					sameDomain(func(vm *api.VM) error {
						if vm.VCPU != 2 {
							return fmt.Errorf("drift not corrected: %d vCPU", vm.VCPU)
						}
						return nil
					}),
					volumeSize(scratchName, 64),
				),
			},
			{
				// The domain deleted out of band: planned as a create (and
				// its snapshot with it), never as an error.
				PreConfig: func() {
					if err := cl.DeleteVM(ctx, vmName, 0); err != nil {
						t.Fatal(err)
					}
				},
				Config: withCfg(final),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_vm.vm", plancheck.ResourceActionCreate),
					plancheck.ExpectResourceAction("kvm_snapshot.snap", plancheck.ResourceActionCreate),
					plancheck.ExpectResourceAction("kvm_disk.clone", plancheck.ResourceActionNoop),
				}},
				Check: testAccCheckVMOnHost(cl, vmName, func(vm *api.VM) error {
					if vm.UUID == uuid {
						return fmt.Errorf("domain %s still has UUID %s after being deleted", vmName, uuid)
					}
					if vm.State != api.StateRunning || vm.VCPU != 2 {
						return fmt.Errorf("re-created domain: state %s, %d vCPU", vm.State, vm.VCPU)
					}
					return nil
				}),
			},
		},
	})
}

// realParallelConfig is count VMs, each on its own linked clone of one base.
func realParallelConfig(c *harness.Cluster, prefix string, count int) string {
	return c.ProviderHCL() + fmt.Sprintf(`
resource "kvm_disk" "base" {
  name     = "%[1]sbase"
  host     = "host-a"
  size_mib = 64
}

resource "kvm_disk" "clone" {
  count        = %[2]d
  name         = "%[1]sc${count.index}"
  host         = "host-a"
  base_disk_id = kvm_disk.base.id
}

resource "kvm_vm" "vm" {
  count            = %[2]d
  name             = "%[1]sv${count.index}"
  host             = "host-a"
  vcpu             = 1
  memory_mib       = 64
  shutdown_timeout = 0
  disks            = [{ disk_id = kvm_disk.clone[count.index].id }]
}
`, prefix, count)
}

// realCheckCounts checks that exactly vms domains (all running) and vols
// volumes named with prefix exist on the host.
func realCheckCounts(cl *client.Client, prefix string, vms, vols int) resource.TestCheckFunc {
	return func(*terraform.State) error {
		gotVMs, gotVols, _, err := realObjects(context.Background(), cl, prefix)
		if err != nil {
			return err
		}
		if len(gotVMs) != vms || len(gotVols) != vols {
			return fmt.Errorf("host has %d domains and %d volumes named %s*, want %d and %d", len(gotVMs), len(gotVols), prefix, vms, vols)
		}
		for _, vm := range gotVMs {
			if vm.State != api.StateRunning {
				return fmt.Errorf("domain %s is %s, want running", vm.Name, vm.State)
			}
		}
		return nil
	}
}

// testParallelCreates applies 30 VMs on 30 linked clones of one base at
// terraform's default parallelism (10), removes them, and applies them
// again at -parallelism=30. The host serializes per pool and per domain;
// nothing may fail and nothing may be left over.
func testParallelCreates(t *testing.T, c *harness.Cluster, cl *client.Client, prefix string) {
	const n = 30
	control, argsLog := terraformParallelismWrapper(t)
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy:             realCheckNothingLeft(cl, prefix),
		Steps: []resource.TestStep{
			{
				Config: realParallelConfig(c, prefix, n),
				Check: resource.ComposeAggregateTestCheckFunc(
					realCheckCounts(cl, prefix, n, n+1),
					func(*terraform.State) error { return checkTerraformRan(argsLog, "apply", "-parallelism=10") },
				),
			},
			{
				Config: realParallelConfig(c, prefix, 0),
				Check:  realCheckCounts(cl, prefix, 0, 1),
			},
			{
				PreConfig: func() {
					if err := os.WriteFile(control, []byte("30"), 0o644); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(argsLog, nil, 0o644); err != nil {
						t.Fatal(err)
					}
				},
				Config: realParallelConfig(c, prefix, n),
				Check: resource.ComposeAggregateTestCheckFunc(
					realCheckCounts(cl, prefix, n, n+1),
					func(*terraform.State) error { return checkTerraformRan(argsLog, "apply", "-parallelism=30") },
				),
			},
		},
	})
}

func TestAccReal_parallelCreates(t *testing.T) {
	prefix := realPrefix("rp")
	c, cl := realStart(t, prefix)
	testParallelCreates(t, c, cl, prefix)
}

// The same on the embedded default (libvirt's test driver, in-memory OVSDB).
func TestAcc_parallelCreatesEmbedded(t *testing.T) {
	// The test driver's own domain "test" holds 8 GiB of a 3 GiB node.
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: []string{"--cpu-overcommit", "64", "--memory-overcommit", "10"}})
	cl := testAccVMClient(t, c, "host-a")
	testParallelCreates(t, c, cl, "par-")
}

func TestAccReal_vmOnVLANNetwork(t *testing.T) {
	if realstack.RequireOVSDB(t) == "embedded" {
		realstack.Unavailable(t, "needs a real Open vSwitch, not %s=embedded", realstack.OVSDBEnv)
	}
	prefix := realPrefix("rv")
	c, cl := realStart(t, prefix)
	netName, vmName := prefix+"net", prefix+"vm"
	var port string  // the tap device libvirt plugged into the bridge
	var domID string // libvirt's id of the running domain: changes on restart
	cfg := c.ProviderHCL() + fmt.Sprintf(`
resource "kvm_network" "net" {
  name  = "%[1]s"
  hosts = ["host-a"]
  vlan  = 42
}

resource "kvm_vm" "vm" {
  name               = "%[2]s"
  host               = "host-a"
  vcpu               = 1
  memory_mib         = 64
  shutdown_timeout   = 0
  network_interfaces = [{ network = kvm_network.net.name }]
}
`, netName, vmName)
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy: resource.ComposeAggregateTestCheckFunc(
			realCheckNothingLeft(cl, prefix),
			func(*terraform.State) error {
				if port == "" {
					return nil
				}
				out, err := realOVSVsctl("--format=csv", "--no-headings", "--columns=name", "find", "Port", "name="+port)
				if err != nil {
					return err
				}
				if out != "" {
					return fmt.Errorf("OVS port %s is still there after destroy: %s", port, out)
				}
				return nil
			},
		),
		Steps: []resource.TestStep{{
			Config: cfg,
			ConfigStateChecks: []statecheck.StateCheck{
				statecheck.ExpectKnownValue("kvm_vm.vm", tfjsonpath.New("state"), knownvalue.StringExact("running")),
				statecheck.ExpectKnownValue("kvm_network.net", tfjsonpath.New("vlan"), knownvalue.Int64Exact(42)),
			},
			Check: func(s *terraform.State) error {
				mac, err := stateAttr(s, "kvm_vm.vm", "network_interfaces.0.mac")
				if err != nil {
					return err
				}
				bridge, err := stateAttr(s, "kvm_network.net", "bridge")
				if err != nil {
					return err
				}
				vm, err := cl.GetVM(context.Background(), vmName)
				if err != nil {
					return err
				}
				if len(vm.Interfaces) != 1 || vm.Interfaces[0].Port == "" {
					return fmt.Errorf("host reports no tap device for %s: %+v", vmName, vm.Interfaces)
				}
				port = vm.Interfaces[0].Port
				// Now ask OVS itself.
				ports, err := realOVSVsctl("list-ports", bridge)
				if err != nil {
					return err
				}
				if !strings.Contains("\n"+ports+"\n", "\n"+port+"\n") {
					return fmt.Errorf("port %s is not on bridge %s (ports: %q)", port, bridge, ports)
				}
				tag, err := realOVSVsctl("get", "Port", port, "tag")
				if err != nil {
					return err
				}
				if tag != "42" {
					return fmt.Errorf("port %s has VLAN tag %s, want 42", port, tag)
				}
				attached, err := realOVSVsctl("get", "Interface", port, "external_ids:attached-mac")
				if err != nil {
					return err
				}
				if strings.Trim(attached, `"`) != mac {
					return fmt.Errorf("port %s is attached to MAC %s, want %s (from state)", port, attached, mac)
				}
				iface, err := realOVSVsctl("get", "Interface", port, "external_ids:vm-id")
				if err != nil {
					return err
				}
				if strings.Trim(iface, `"`) != vm.UUID {
					return fmt.Errorf("port %s belongs to vm-id %s, want %s", port, iface, vm.UUID)
				}
				if domID, _, err = realVirsh("domid", vmName); err != nil {
					return err
				}
				return nil
			},
		}, {
			// A NIC appended to the running VM is hot-added: same QEMU
			// process (libvirt's domain id survives only without a
			// restart), and its port appears on the bridge.
			Config: strings.Replace(cfg, "network_interfaces = [{ network = kvm_network.net.name }]",
				"network_interfaces = [{ network = kvm_network.net.name }, { network = kvm_network.net.name }]", 1),
			Check: func(s *terraform.State) error {
				id, _, err := realVirsh("domid", vmName)
				if err != nil {
					return err
				}
				if strings.TrimSpace(id) != strings.TrimSpace(domID) {
					return fmt.Errorf("domain id changed from %s to %s: the VM was restarted instead of hot-adding the NIC", strings.TrimSpace(domID), strings.TrimSpace(id))
				}
				vm, err := cl.GetVM(context.Background(), vmName)
				if err != nil {
					return err
				}
				if len(vm.Interfaces) != 2 || vm.Interfaces[1].Port == "" {
					return fmt.Errorf("after hot-add the host reports interfaces %+v", vm.Interfaces)
				}
				mac, err := stateAttr(s, "kvm_vm.vm", "network_interfaces.1.mac")
				if err != nil {
					return err
				}
				attached, err := realOVSVsctl("get", "Interface", vm.Interfaces[1].Port, "external_ids:attached-mac")
				if err != nil {
					return err
				}
				if strings.Trim(attached, `"`) != mac {
					return fmt.Errorf("hot-added port %s is attached to MAC %s, want %s", vm.Interfaces[1].Port, attached, mac)
				}
				return nil
			},
		}},
	})
}

// Hostile names fail at plan time on the real host too, and nothing
// reaches libvirt.
func TestAccReal_hostileNames(t *testing.T) {
	prefix := realPrefix("rh")
	c, cl := realStart(t, prefix)
	ctx := context.Background()
	names := map[string]string{
		"traversal": "../x</name>",
		"nul":       "a\x00b",
		"long":      prefix + strings.Repeat("a", 300),
	}
	before := map[string]bool{}
	snapshot := func() (map[string]bool, error) {
		vms, err := cl.ListVMs(ctx)
		if err != nil {
			return nil, err
		}
		vols, err := cl.ListVolumes(ctx, "default")
		if err != nil {
			return nil, err
		}
		out := map[string]bool{}
		for _, v := range vms {
			out["domain "+v.Name] = true
		}
		for _, v := range vols {
			out["volume "+v.Name] = true
		}
		return out, nil
	}
	var steps []resource.TestStep
	for _, what := range []string{"traversal", "nul", "long"} {
		n := hclString(names[what])
		steps = append(steps,
			resource.TestStep{
				Config: c.ProviderHCL() + `
resource "kvm_disk" "bad" {
  name     = ` + n + `
  host     = "host-a"
  size_mib = 64
}`,
				PlanOnly:    true,
				ExpectError: regexp.MustCompile(`(?s)Invalid Attribute Value.*disk name .*(is invalid|characters long)`),
			},
			resource.TestStep{
				Config: c.ProviderHCL() + `
resource "kvm_vm" "bad" {
  name             = ` + n + `
  host             = "host-a"
  vcpu             = 1
  memory_mib       = 64
  shutdown_timeout = 0
}`,
				PlanOnly:    true,
				ExpectError: regexp.MustCompile(`(?s)Invalid VM Name.*VM name .*(is invalid|characters long)`),
			},
			resource.TestStep{
				// A hostile name inside a reference is refused as well.
				Config: c.ProviderHCL() + `
resource "kvm_vm" "bad" {
  name             = "` + prefix + `ok"
  host             = "host-a"
  vcpu             = 1
  memory_mib       = 64
  shutdown_timeout = 0
  disks            = [{ disk_id = "host-a/default/` + strings.Trim(n, `"`) + `" }]
}`,
				PlanOnly:    true,
				ExpectError: regexp.MustCompile(`(?s)Invalid Disk ID.*(volume name .*(is invalid|characters long)|must look like)`),
			},
		)
	}
	var err error
	if before, err = snapshot(); err != nil {
		t.Fatal(err)
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps:                    steps,
	})
	after, err := snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// Other packages may create objects on the shared libvirtd meanwhile:
	// only objects that could stem from these names count.
	for k := range after {
		if before[k] {
			continue
		}
		name := k[strings.Index(k, " ")+1:]
		if strings.HasPrefix(name, prefix) || strings.Contains(name, "x<") || strings.Contains(name, "name>") ||
			strings.ContainsRune(name, 0) || len(name) > api.MaxNameLength || name == "a" || name == "b" || name == "ab" {
			t.Errorf("a refused plan reached the host: %s", k)
		}
	}
}
