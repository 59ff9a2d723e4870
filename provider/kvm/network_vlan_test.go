package kvm

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"

	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// vlanChangeConfig is a network with the given vlan line (empty: untagged)
// and a running VM on it.
func vlanChangeConfig(providerHCL, netName, vmName, vlan string) string {
	return providerHCL + fmt.Sprintf(`
resource "kvm_network" "net" {
  name  = %q
  hosts = ["host-a"]
  %s
}

resource "kvm_vm" "vm" {
  name               = %q
  host               = "host-a"
  vcpu               = 1
  memory_mib         = 64
  shutdown_timeout   = 0
  network_interfaces = [{ network = kvm_network.net.name }]
}
`, netName, vlan, vmName)
}

// vlanSteps are the changes every VLAN test walks through: tagged, retagged,
// untagged, tagged again. Each is an in-place update of the network only.
var vlanSteps = []struct {
	hcl string
	tag int64
}{
	{"vlan = 42", 42},
	{"vlan = 43", 43},
	{"", 0},
	{"vlan = 44", 44},
}

// checkVMInterfaceVLAN checks what the host reads back from the domain
// definition: the VM's interface carries the network's tag.
func checkVMInterfaceVLAN(cl *client.Client, vmName string, want int64) error {
	vm, err := cl.GetVM(context.Background(), vmName)
	if err != nil {
		return err
	}
	if len(vm.Interfaces) != 1 || vm.Interfaces[0].VLAN != want {
		return fmt.Errorf("VM %s interfaces %+v, want one with vlan %d", vmName, vm.Interfaces, want)
	}
	if vm.State != "running" {
		return fmt.Errorf("VM %s is %s after the vlan change", vmName, vm.State)
	}
	return nil
}

// vlanUpdateOnly plans an in-place update of the network and nothing for
// the VM: no replacement, no restart.
var vlanUpdateOnly = resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
	plancheck.ExpectResourceAction("kvm_network.net", plancheck.ResourceActionUpdate),
	plancheck.ExpectResourceAction("kvm_vm.vm", plancheck.ResourceActionNoop),
}}

// Changing a network's vlan retags the interfaces of the VMs on it in
// place, on the embedded default: the domain definition follows (so a later
// VM update sees no hardware change and does not restart it), the VM keeps
// running with the same UUID, and the plan after each apply is empty. (The in-memory OVSDB port
// tags are checked in backend/vswitch.)
func TestAccNetwork_vlanChangeRetagsVMs(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs})
	cl := testAccVMClient(t, c, "host-a")
	var uuid string
	var steps []resource.TestStep
	for i, st := range vlanSteps {
		step := resource.TestStep{
			Config: vlanChangeConfig(c.ProviderHCL(), "retag", "retag-vm", st.hcl),
			Check: func(s *terraform.State) error {
				id, err := stateAttr(s, "kvm_vm.vm", "id")
				if err != nil {
					return err
				}
				if uuid == "" {
					uuid = id
				} else if id != uuid {
					return fmt.Errorf("VM UUID changed from %s to %s", uuid, id)
				}
				return checkVMInterfaceVLAN(cl, "retag-vm", st.tag)
			},
		}
		if i > 0 {
			step.ConfigPlanChecks = vlanUpdateOnly
		}
		steps = append(steps, step)
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy:             testAccCheckVMDestroy(c),
		Steps:                    steps,
	})
}

// qemuPID is the PID libvirt records for a running domain.
func qemuPID(vmName string) (string, error) {
	b, err := os.ReadFile("/run/libvirt/qemu/" + vmName + ".pid")
	return strings.TrimSpace(string(b)), err
}

// vlanTagRE finds the <vlan><tag id='N'/></vlan> of an interface in
// virsh dumpxml output.
var vlanTagRE = regexp.MustCompile(`<vlan>\s*<tag id='(\d+)'/>\s*</vlan>`)

// TestAccNetworkReal_vlanChangeRetagsRunningVM changes the vlan of a
// network with a running QEMU VM on the real stack: Open vSwitch's port of
// the VM (libvirt's vnetN) carries the new tag, libvirt's live and
// persistent domain XML too, the QEMU process is the same (no restart),
// and the plan after each apply is empty. Then untagged, then tagged again.
func TestAccNetworkReal_vlanChangeRetagsRunningVM(t *testing.T) {
	if os.Getenv("KVM_TEST_OVSDB") == "" {
		t.Skip("real-stack network test: set KVM_TEST_OVSDB (e.g. unix:/run/openvswitch/db.sock)")
	}
	prefix := realPrefix("rt")
	c, cl := realStart(t, prefix)
	netName, vmName := prefix+"net", prefix+"vm"
	var pid string
	var steps []resource.TestStep
	for i, st := range vlanSteps {
		step := resource.TestStep{
			Config: vlanChangeConfig(c.ProviderHCL(), netName, vmName, st.hcl),
			Check: func(*terraform.State) error {
				if err := checkVMInterfaceVLAN(cl, vmName, st.tag); err != nil {
					return err
				}
				vm, err := cl.GetVM(context.Background(), vmName)
				if err != nil {
					return err
				}
				port := vm.Interfaces[0].Port
				if port == "" {
					return fmt.Errorf("host reports no tap device for %s", vmName)
				}
				// Open vSwitch itself: an untagged port has an empty tag.
				tag, err := realOVSVsctl("get", "Port", port, "tag")
				if err != nil {
					return err
				}
				want := fmt.Sprint(st.tag)
				if st.tag == 0 {
					want = "[]"
				}
				if tag != want {
					return fmt.Errorf("OVS port %s has tag %s, want %s", port, tag, want)
				}
				// libvirt: the live and the persistent definition.
				for _, args := range [][]string{{"dumpxml", vmName}, {"dumpxml", "--inactive", vmName}} {
					xml, _, err := realVirsh(args...)
					if err != nil {
						return err
					}
					m := vlanTagRE.FindAllStringSubmatch(xml, -1)
					switch {
					case st.tag == 0 && len(m) != 0:
						return fmt.Errorf("virsh %s: interface still tagged %v", strings.Join(args, " "), m)
					case st.tag != 0 && (len(m) != 1 || m[0][1] != want):
						return fmt.Errorf("virsh %s: vlan tags %v, want one with id %s", strings.Join(args, " "), m, want)
					}
				}
				p, err := qemuPID(vmName)
				if err != nil {
					return err
				}
				if pid == "" {
					pid = p
				} else if p != pid {
					return fmt.Errorf("QEMU PID changed from %s to %s: the VM was restarted", pid, p)
				}
				return nil
			},
		}
		if i > 0 {
			step.ConfigPlanChecks = vlanUpdateOnly
		}
		steps = append(steps, step)
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy:             realCheckNothingLeft(cl, prefix),
		Steps:                    steps,
	})
}
