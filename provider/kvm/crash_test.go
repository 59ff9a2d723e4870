package kvm

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/terraform"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// crashHost is one kvm-hostd that a test kills at a crash point and starts
// again. The provider finds it through KVM_HOSTS, because a restarted host
// listens on a new port.
type crashHost struct {
	c     *harness.Cluster
	h     *harness.Host
	token string
}

func (ch *crashHost) client(t *testing.T) *client.Client {
	t.Helper()
	cl, err := client.New(client.Options{Endpoint: ch.h.URL, Token: ch.token})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// restart waits for the host to have died at its crash point and starts it
// normally (no hook), as an operator or a supervisor would.
func (ch *crashHost) restart(t *testing.T, point string) {
	t.Helper()
	if !ch.h.Exited(30 * time.Second) {
		t.Fatalf("kvm-hostd did not die at crash point %s", point)
	}
	ch.h.SetEnv(nil)
	if err := ch.h.Start(); err != nil {
		t.Fatalf("restarting kvm-hostd after the crash at %s: %v", point, err)
	}
	t.Setenv("KVM_HOSTS", ch.c.KVMHosts())
}

// sweep fails when the host holds a domain, volume, network or switch port
// named with prefix that the state does not account for.
func (ch *crashHost) sweep(t *testing.T, s *terraform.State, prefix string) error {
	known := harness.NewKnown()
	for _, rs := range s.RootModule().Resources {
		if rs.Primary != nil {
			known.AddResource(rs.Type, func(a string) string { return rs.Primary.Attributes[a] })
		}
	}
	o, err := harness.FindOrphans(context.Background(), map[string]*client.Client{ch.h.Name: ch.client(t)}, "default", prefix, known)
	if err != nil {
		return err
	}
	if !o.Empty() {
		return fmt.Errorf("after the re-apply: %s", o)
	}
	return nil
}

// crashVMCreatePoints are the steps of a VM create kvm-hostd can die at.
var crashVMCreatePoints = []string{"vm.create", "vm.defined", "vm.started"}

// testCrashVMCreate kills kvm-hostd at each step of a VM create (a VM with
// a disk and a NIC): the apply fails; kvm-hostd is started again normally;
// the re-apply converges to an empty plan; and the sweep finds no orphan
// domain, volume or switch port.
func testCrashVMCreate(t *testing.T, real bool, tag string, points []string) {
	for _, point := range points {
		t.Run(point, func(t *testing.T) {
			testAccPreCheck(t)
			opts := harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs, Env: harness.CrashEnv(point)}
			if real {
				opts = harness.RealOptions(t, opts)
				opts.ExtraArgs = realHostArgs
				if os.Getenv("KVM_TEST_OVSDB") == "" {
					t.Skip("real-stack crash test: set KVM_TEST_OVSDB (e.g. unix:/run/openvswitch/db.sock)")
				}
			}
			prefix := realPrefix(tag)
			c := startHosts(t, opts)
			ch := &crashHost{c: c, h: c.Host("host-a"), token: c.Token}
			t.Setenv("KVM_HOSTS", c.KVMHosts())
			// Runs before the host stops: whatever a failed run left.
			t.Cleanup(func() { realSweep(t, ch.client(t), prefix) })
			config := fmt.Sprintf(`
provider "kvm" {
  token = %[1]q
}
resource "kvm_network" "n" {
  name = "%[2]snet"
}
resource "kvm_disk" "d" {
  name     = "%[2]sdisk"
  host     = "host-a"
  size_mib = 16
}
resource "kvm_vm" "v" {
  name               = "%[2]svm"
  host               = "host-a"
  vcpu               = 1
  memory_mib         = 64
  shutdown_timeout   = 0
  disks              = [{ disk_id = kvm_disk.d.id }]
  network_interfaces = [{ network = kvm_network.n.name }]
}
`, c.Token, prefix)
			resource.Test(t, resource.TestCase{
				ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
				CheckDestroy:             func(s *terraform.State) error { return realCheckNothingLeft(ch.client(t), prefix)(s) },
				Steps: []resource.TestStep{
					{
						Config:      config,
						ExpectError: regexp.MustCompile(`(?i)kvm_vm|host-a`),
					},
					{
						PreConfig: func() { ch.restart(t, point) },
						Config:    config,
						Check:     func(s *terraform.State) error { return ch.sweep(t, s, prefix) },
					},
				},
			})
		})
	}
}

// On the embedded default a crash loses the test driver's state with the
// process (it lives in kvm-hostd): the re-apply re-creates everything, so
// one point (the response lost with the process) is enough here.
func TestAccFault_crashVMCreate(t *testing.T) {
	testCrashVMCreate(t, false, "kc", []string{"vm.started"})
}

// On the real stack libvirt and Open vSwitch keep what kvm-hostd did before
// it died, which is what a re-apply must converge from.
func TestAccReal_crashVMCreate(t *testing.T) {
	testCrashVMCreate(t, true, "kr", crashVMCreatePoints)
}

// The orphan sweep reports what no state holds: a domain, its volume, its
// network and its switch port made behind Terraform's back, and only the
// port and the domain once the state knows the rest.
func TestAccFault_sweepFindsOrphans(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs})
	cl := testAccVMClient(t, c, "host-a")
	ctx := context.Background()
	const p = "sw-"
	attrs := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	if _, err := cl.PutNetwork(ctx, p+"net", api.NetworkSpec{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.PutVolume(ctx, "default", p+"disk", api.VolumeSpec{SizeMiB: 16, Format: "qcow2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.PutVM(ctx, p+"vm", api.VMSpec{VCPU: 1, MemoryMiB: 64, Running: true,
		Disks:      []api.VMDisk{{Pool: "default", Volume: p + "disk"}},
		Interfaces: []api.VMInterface{{Network: p + "net"}},
	}); err != nil {
		t.Fatal(err)
	}
	hosts := map[string]*client.Client{"host-a": cl}
	known := harness.NewKnown()
	o, err := harness.FindOrphans(ctx, hosts, "default", p, known)
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Domains) != 1 || len(o.Volumes) != 1 || len(o.Networks) != 1 || len(o.Ports) != 1 {
		t.Errorf("with an empty state: %s; want 1 domain, volume, network and port set", o)
	}
	known.AddResource("kvm_network", func(string) string { return p + "net" })
	known.AddResource("kvm_disk", attrs(map[string]string{"host": "host-a", "name": p + "disk"}))
	if o, err = harness.FindOrphans(ctx, hosts, "default", p, known); err != nil {
		t.Fatal(err)
	}
	if len(o.Domains) != 1 || len(o.Volumes) != 0 || len(o.Networks) != 0 || len(o.Ports) != 1 {
		t.Errorf("with the network and disk in state: %s; want the domain and its port only", o)
	}
	known.AddResource("kvm_vm", attrs(map[string]string{"host": "host-a", "name": p + "vm"}))
	if o, err = harness.FindOrphans(ctx, hosts, "default", p, known); err != nil || !o.Empty() {
		t.Errorf("with everything in state: %s (%v)", o, err)
	}
}
