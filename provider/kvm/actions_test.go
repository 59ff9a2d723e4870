package kvm

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/terraform"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// actionWorkdir is a Terraform working directory on the modern binary
// whose configuration holds only actions: `terraform apply -invoke` there
// acts on VMs another state (here, the test's client) owns.
func actionWorkdir(t *testing.T, c *harness.Cluster, tf string) *harness.Workdir {
	t.Helper()
	w, err := harness.NewWorkdir(t.TempDir(), "actions", tf, "KVM_HOSTS="+c.KVMHosts(), "KVM_TOKEN="+c.Token)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

const actionsHCLHeader = "terraform {\n  required_providers {\n    kvm = { source = \"kvmfleet/kvm\" }\n  }\n}\nprovider \"kvm\" {}\n"

// invoke runs `terraform apply -invoke=action.<addr>` and fails the test on
// an error; it returns the output.
func invoke(t *testing.T, w *harness.Workdir, addr string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := w.Run(ctx, "apply", "-auto-approve", "-input=false", "-no-color", "-invoke=action."+addr)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return out
}

// vmPowerRestarts counts the restarts of a VM in its host's log: kvm-hostd
// logs libvirt's domain ID before and after each start that followed a
// stop. A restarted domain gets a new ID, which is how libvirt (even its
// test driver, which boots nothing) shows a reboot.
func vmPowerRestarts(t *testing.T, h *harness.Host, vm string) int {
	t.Helper()
	re := regexp.MustCompile(`vm power.*name=` + regexp.QuoteMeta(vm) + ` .*was_active=true old_domain_id=(\d+) domain_id=(\d+)`)
	n := 0
	for _, m := range re.FindAllStringSubmatch(h.Log(), -1) {
		if m[1] == m[2] {
			t.Fatalf("VM %s restarted with the same libvirt domain ID %s", vm, m[1])
		}
		n++
	}
	return n
}

func wantVMState(t *testing.T, cl *client.Client, vm, state string) {
	t.Helper()
	v, err := cl.GetVM(context.Background(), vm)
	if err != nil {
		t.Fatal(err)
	}
	if v.State != state {
		t.Fatalf("VM %s is %s, want %s", vm, v.State, state)
	}
}

// TestAccActions_invoke invokes kvm_vm_power (stop, start, reboot, by
// "<host>/<name>" and by UUID) and kvm_snapshot_revert with `terraform
// apply -invoke` on Terraform 1.14+, against a VM no Terraform state owns.
func TestAccActions_invoke(t *testing.T) {
	tf := modernTerraform(t)
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: snapshotTestHostArgs})
	cl := diskTestClient(t, c, "host-a")
	vm := snapshotTestVM(t, cl, "act")
	w := actionWorkdir(t, c, tf)
	cfg := actionsHCLHeader + fmt.Sprintf(`
action "kvm_vm_power" "stop" {
  config {
    vm_id = "host-a/act"
    state = "stopped"
  }
}
action "kvm_vm_power" "start" {
  config {
    vm_id = %q
    state = "running"
  }
}
action "kvm_vm_power" "reboot" {
  config {
    vm_id = "host-a/act"
    state = "rebooted"
  }
}
action "kvm_snapshot_revert" "checkpoint" {
  config {
    snapshot_id = "host-a/act/checkpoint"
  }
}
`, vm.UUID)
	if err := w.WriteConfig(cfg); err != nil {
		t.Fatal(err)
	}
	h := c.Host("host-a")

	invoke(t, w, "kvm_vm_power.stop")
	wantVMState(t, cl, "act", api.StateShutoff)
	invoke(t, w, "kvm_vm_power.stop") // already stopped: nothing to do
	wantVMState(t, cl, "act", api.StateShutoff)
	invoke(t, w, "kvm_vm_power.start")
	wantVMState(t, cl, "act", api.StateRunning)
	if n := vmPowerRestarts(t, h, "act"); n != 0 {
		t.Fatalf("%d restarts before any reboot", n)
	}
	out := invoke(t, w, "kvm_vm_power.reboot")
	wantVMState(t, cl, "act", api.StateRunning)
	if n := vmPowerRestarts(t, h, "act"); n != 1 {
		t.Fatalf("after one reboot the host logged %d restarts of VM act\n%s\nhost log:\n%s", n, out, h.Log())
	}

	// A snapshot of the running VM (with memory), the VM stopped, then
	// the revert action: the VM is back, running as it was.
	if _, err := cl.PutSnapshot(context.Background(), "act", "checkpoint", api.SnapshotSpec{IncludeMemory: true}); err != nil {
		t.Fatal(err)
	}
	invoke(t, w, "kvm_vm_power.stop")
	wantVMState(t, cl, "act", api.StateShutoff)
	invoke(t, w, "kvm_snapshot_revert.checkpoint")
	wantVMState(t, cl, "act", api.StateRunning)
	s, err := cl.GetSnapshot(context.Background(), "act", "checkpoint")
	if err != nil || !s.Current {
		t.Fatalf("snapshot checkpoint after the revert: %+v, %v", s, err)
	}

	// Failures are errors of the apply, naming the object.
	if err := w.WriteConfig(actionsHCLHeader + `
action "kvm_vm_power" "gone" {
  config {
    vm_id = "host-a/no-such-vm"
    state = "running"
  }
}
`); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err = w.Run(ctx, "apply", "-auto-approve", "-input=false", "-no-color", "-invoke=action.kvm_vm_power.gone")
	if err == nil || !strings.Contains(out, "no-such-vm") {
		t.Fatalf("invoking on a missing VM: err %v\n%s", err, out)
	}
}

// TestAccActions_trigger runs the actions from lifecycle action_trigger
// blocks (after_create, after_update) through the test framework, and
// checks their configuration at plan time.
func TestAccActions_trigger(t *testing.T) {
	modernTerraform(t)
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: snapshotTestHostArgs})
	cl := diskTestClient(t, c, "host-a")
	snapshotTestVM(t, cl, "trig")
	h := c.Host("host-a")
	cfg := func(input string) string {
		return c.ProviderHCL() + fmt.Sprintf(`
action "kvm_vm_power" "reboot" {
  config {
    vm_id = "host-a/trig"
    state = "rebooted"
  }
}

# Rebooted whenever the input changes (a new image, a new config file...).
resource "terraform_data" "rollout" {
  input = %q
  lifecycle {
    action_trigger {
      events  = [after_update]
      actions = [action.kvm_vm_power.reboot]
    }
  }
}

# Started once, when this state is first applied.
resource "terraform_data" "bootstrap" {
  input = "once"
  lifecycle {
    action_trigger {
      events  = [after_create]
      actions = [action.kvm_vm_power.start]
    }
  }
}

action "kvm_vm_power" "start" {
  config {
    vm_id = "host-a/trig"
    state = "running"
  }
}
`, input)
	}
	restarts := func(want int) resource.TestCheckFunc {
		return func(*terraform.State) error {
			if n := vmPowerRestarts(t, h, "trig"); n != want {
				return fmt.Errorf("VM trig restarted %d times, want %d", n, want)
			}
			return nil
		}
	}
	invalid := func(vmID, state string) string {
		return c.ProviderHCL() + fmt.Sprintf(`
action "kvm_vm_power" "bad" {
  config {
    vm_id = %q
    state = %q
  }
}
resource "terraform_data" "t" {
  lifecycle {
    action_trigger {
      events  = [after_create]
      actions = [action.kvm_vm_power.bad]
    }
  }
}
`, vmID, state)
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{Config: invalid("host-a/trig", "paused"), ExpectError: regexp.MustCompile(`(?s)value must be one of.*running`)},
			{Config: invalid("trig", "running"), ExpectError: regexp.MustCompile(`must be "<host>/<vm name>"`)},
			{Config: invalid("host-z/trig", "running"), ExpectError: regexp.MustCompile(`Unknown Host`)},
			{
				Config: c.ProviderHCL() + `
action "kvm_snapshot_revert" "bad" {
  config {
    snapshot_id = "host-a/trig"
  }
}
resource "terraform_data" "t" {
  lifecycle {
    action_trigger {
      events  = [after_create]
      actions = [action.kvm_snapshot_revert.bad]
    }
  }
}
`,
				ExpectError: regexp.MustCompile(`<host>/<vm name>/<snapshot name>`),
			},
			{
				PreConfig: func() {
					if _, err := cl.PowerVM(context.Background(), "trig", api.PowerStopped); err != nil {
						t.Fatal(err)
					}
				},
				Config: cfg("v1"),
				Check: resource.ComposeTestCheckFunc(restarts(0), testAccCheckVMOnHost(cl, "trig", func(vm *api.VM) error {
					if vm.State != api.StateRunning {
						return fmt.Errorf("after_create: VM trig is %s, want running", vm.State)
					}
					return nil
				})),
			},
			{Config: cfg("v2"), Check: restarts(1)},
			{Config: cfg("v2"), Check: restarts(1)}, // no change, no action
		},
	})
}
