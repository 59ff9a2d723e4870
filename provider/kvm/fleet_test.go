package kvm

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// fleetCLI drives the terraform CLI against a cluster, so tests see the
// plan's warnings exactly as an operator does.
type fleetCLI struct {
	t *testing.T
	c *harness.Cluster
	w *harness.Workdir
}

func newFleetCLI(t *testing.T, c *harness.Cluster) *fleetCLI {
	t.Helper()
	tf := os.Getenv("TF_ACC_TERRAFORM_PATH")
	if tf == "" {
		t.Skip("needs the terraform CLI: set TF_ACC_TERRAFORM_PATH (scripts/terraform-path.sh)")
	}
	w, err := harness.NewWorkdir(t.TempDir(), "fleet", tf)
	if err != nil {
		t.Fatal(err)
	}
	f := &fleetCLI{t: t, c: c, w: w}
	t.Cleanup(func() {
		if t.Failed() {
			c.DumpLogs(t)
		}
	})
	return f
}

// provider renders the provider block; extra adds attributes per host.
func (f *fleetCLI) provider(extra map[string]string) string {
	var b strings.Builder
	b.WriteString("terraform {\n  required_providers {\n    kvm = { source = \"kvmfleet/kvm\" }\n  }\n}\n")
	b.WriteString("provider \"kvm\" {\n  token = \"" + f.c.Token + "\"\n  hosts = {\n")
	for _, h := range f.c.Hosts {
		fmt.Fprintf(&b, "    %q = { endpoint = %q %s }\n", h.Name, h.URL, extra[h.Name])
	}
	b.WriteString("  }\n}\n")
	return b.String()
}

// run writes hcl and runs terraform args; wantErr says whether it must fail.
func (f *fleetCLI) run(hcl string, wantErr bool, args ...string) string {
	f.t.Helper()
	if err := f.w.WriteConfig(hcl); err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := f.w.Run(ctx, append(args, "-input=false", "-no-color")...)
	if (err != nil) != wantErr {
		f.t.Fatalf("terraform %s: err %v, want error %v\n%s", strings.Join(args, " "), err, wantErr, out)
	}
	return out
}

func (f *fleetCLI) apply(hcl string) string { return f.run(hcl, false, "apply", "-auto-approve") }

// planEmpty wants a plan without changes.
func (f *fleetCLI) planEmpty(hcl, why string) {
	f.t.Helper()
	if out := f.run(hcl, false, "plan", "-detailed-exitcode"); !strings.Contains(out, "No changes.") {
		f.t.Fatalf("%s: plan is not empty:\n%s", why, out)
	}
}

// planChanges runs a plan that must show changes.
func (f *fleetCLI) planChanges(hcl string) string {
	f.t.Helper()
	out := f.run(hcl, true, "plan", "-detailed-exitcode") // exit code 2: changes
	if !strings.Contains(out, "Plan:") {
		f.t.Fatalf("plan shows no changes:\n%s", out)
	}
	return out
}

// wantIn wants each of wants in out; whitespace runs count as one space,
// since terraform wraps warnings.
func wantIn(t *testing.T, out string, wants ...string) {
	t.Helper()
	flat := strings.Join(strings.Fields(out), " ")
	for _, w := range wants {
		if !strings.Contains(flat, strings.Join(strings.Fields(w), " ")) {
			t.Fatalf("output lacks %q:\n%s", w, out)
		}
	}
}

// fleetVMs renders a kvm_cluster_placement "p" of n keys fleet-<i> of memMiB
// each, with a kvm_vm per key on its assignment. migration = "replace"
// carries a move out on libvirt's test driver, which cannot migrate.
func fleetVMs(placementArgs string, n int, memMiB int64, vmArgs string) string {
	var req []string
	for i := range n {
		req = append(req, fmt.Sprintf("%q = { vcpu = 1, memory_mib = %d }", fmt.Sprintf("fleet-%d", i), memMiB))
	}
	return fmt.Sprintf(`
resource "kvm_cluster_placement" "p" {
  %s
  request = {
    %s
  }
}
resource "kvm_vm" "vm" {
  for_each         = kvm_cluster_placement.p.request
  name             = each.key
  host             = kvm_cluster_placement.p.assignments[each.key]
  vcpu             = each.value.vcpu
  memory_mib       = each.value.memory_mib
  shutdown_timeout = 0
  %s
}
output "assignments" { value = kvm_cluster_placement.p.assignments }
`, placementArgs, strings.Join(req, "\n    "), vmArgs)
}

// vmsOn lists the fleet VMs each host reports.
func vmsOn(t *testing.T, c *harness.Cluster) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, h := range c.Hosts {
		if !h.Running() {
			continue
		}
		l, err := testAccVMClient(t, c, h.Name).ListVMs(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, vm := range l {
			if strings.HasPrefix(vm.Name, "fleet-") {
				out[h.Name] = append(out[h.Name], vm.Name)
			}
		}
	}
	return out
}

// TestAccFleet_maintenanceDrain: three hosts, one goes into maintenance;
// the plan moves its keys with reason maintenance, the apply moves the VMs
// (re-created here: the test driver cannot migrate; the real stack test
// live-migrates), kvm_host reports it, and leaving maintenance moves
// nothing back.
func TestAccFleet_maintenanceDrain(t *testing.T) {
	c := testAccPlacementHosts(t)
	f := newFleetCLI(t, c)
	cfg := f.provider(nil) + fleetVMs("", 3, 512, `migration = "replace"`) + `
data "kvm_host" "a" { name = "host-a" }
output "a_maintenance" { value = data.kvm_host.a.maintenance }
`
	f.apply(cfg)
	if on := vmsOn(t, c); len(on["host-a"]) != 1 {
		t.Fatalf("spread put %v on host-a, want one VM", on["host-a"])
	}
	ctx := context.Background()
	clA := testAccVMClient(t, c, "host-a")
	if _, err := clA.SetMaintenance(ctx, api.Maintenance{Enabled: true, Reason: "CHG-7"}); err != nil {
		t.Fatal(err)
	}
	plan := f.planChanges(cfg)
	wantIn(t, plan, "Host in Maintenance", "Host host-a is in maintenance (CHG-7)", "Placement Changes",
		"host host-a is in maintenance)", `a_maintenance = false -> true`)
	out := f.apply(cfg)
	wantIn(t, out, "Apply complete!")
	on := vmsOn(t, c)
	if len(on["host-a"]) != 0 || len(on["host-b"])+len(on["host-c"]) != 3 {
		t.Fatalf("after the drain: %v, want host-a empty", on)
	}
	f.planEmpty(cfg, "after the drain")
	if _, err := clA.SetMaintenance(ctx, api.Maintenance{Enabled: false}); err != nil {
		t.Fatal(err)
	}
	// The data source changes; nothing else does.
	out = f.run(cfg, false, "plan")
	if strings.Contains(out, "kvm_cluster_placement.p will be updated") || strings.Contains(out, "must be replaced") {
		t.Fatalf("leaving maintenance moves keys:\n%s", out)
	}
	f.destroy(cfg)
}

func (f *fleetCLI) destroy(hcl string) {
	f.t.Helper()
	f.run(hcl, false, "destroy", "-auto-approve")
}

// TestAccFleet_rebalance: VMs all on host-a; rebalance with max_moves 1
// moves one per plan, each lowering the imbalance, and stops once it is
// within the threshold: the next plan is empty.
func TestAccFleet_rebalance(t *testing.T) {
	c := testAccPlacementHosts(t)
	f := newFleetCLI(t, c)
	// Each host: 30720 MiB capacity (3 GiB × 10).
	f.apply(f.provider(nil) + fleetVMs(`hosts = ["host-a"]`, 4, 2048, `migration = "replace"`))
	cfg := f.provider(nil) + fleetVMs(`rebalance = { threshold = 0.1, max_moves = 1 }`, 4, 2048, `migration = "replace"`)
	// 8 GiB of 30 on host-a against none: the smallest key goes to host-b.
	plan := f.planChanges(cfg)
	wantIn(t, plan, "fleet-0: host-a → host-b (rebalance: allocated memory share host-a 27% vs host-b 0% (imbalance 0.27 > threshold 0.10; 0.20 after this move))")
	if strings.Count(plan, "(rebalance:") != 1 {
		t.Fatalf("max_moves 1, but the plan moves more:\n%s", plan)
	}
	f.apply(cfg)
	plan = f.planChanges(cfg)
	wantIn(t, plan, "fleet-1: host-a → host-c (rebalance:", "imbalance 0.20 > threshold 0.10; 0.07 after this move")
	f.apply(cfg)
	f.planEmpty(cfg, "imbalance within the threshold")
	on := vmsOn(t, c)
	if len(on["host-a"]) != 2 || len(on["host-b"]) != 1 || len(on["host-c"]) != 1 {
		t.Fatalf("VMs after rebalancing: %v", on)
	}
	f.destroy(cfg)
}

// TestAccFleet_hostLoss: while host-b does not answer, the plan moves its
// keys away with a warning and the apply (a migration from it) fails
// before changing anything. evacuate = true is refused while it answers;
// once it is down, its VM and disk are dropped from the state with a
// warning saying what is lost, and re-created on their new host.
func TestAccFleet_hostLoss(t *testing.T) {
	c := testAccPlacementHosts(t)
	f := newFleetCLI(t, c)
	body := fleetVMs("", 3, 512, `disks = [{ disk_id = kvm_disk.d[each.key].id }]`) + `
resource "kvm_disk" "d" {
  for_each = kvm_cluster_placement.p.request
  name     = "${each.key}-root"
  host     = kvm_cluster_placement.p.assignments[each.key]
  size_mib = 16
}
`
	cfg := f.provider(nil) + body
	evacuate := f.provider(map[string]string{"host-b": ", evacuate = true"}) + body
	f.apply(cfg)
	on := vmsOn(t, c)
	if len(on["host-b"]) != 1 {
		t.Fatalf("spread put %v on host-b, want one VM", on["host-b"])
	}
	lost := on["host-b"][0]

	out := f.run(evacuate, true, "plan")
	wantIn(t, out, "Evacuated Host Still Answers", "host host-b has evacuate = true but still answers")

	if err := c.Host("host-b").Stop(); err != nil {
		t.Fatal(err)
	}
	plan := f.planChanges(cfg)
	wantIn(t, plan, "Host Unhealthy", "Host host-b is unhealthy", "Placement Changes", lost+": host-b → ", "host host-b is unhealthy)")
	out = f.run(cfg, true, "apply", "-auto-approve")
	wantIn(t, out, "host host-b does not answer", "Nothing was changed", "evacuate = true")
	if on := vmsOn(t, c); len(on["host-a"])+len(on["host-c"]) != 2 {
		t.Fatalf("a failed move changed the other hosts: %v", on)
	}
	for _, h := range []string{"host-a", "host-c"} {
		vols, err := testAccVMClient(t, c, h).ListVolumes(context.Background(), "default")
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vols {
			if v.Name == lost+"-root" {
				t.Fatalf("the failed move left volume %s on %s", v.Name, h)
			}
		}
	}

	plan = f.planChanges(evacuate)
	wantIn(t, plan, "Evacuated Host", "Host host-b is evacuated (evacuate = true) and does not answer, so VM host-b/"+lost+" is dropped from the state",
		"Lost: the guest's memory and running state", "the contents of disk(s) host-b/default/"+lost+"-root",
		"so disk host-b/default/"+lost+"-root is dropped from the state", "Lost: its contents, because pool default is not shared; it is re-created empty.")
	f.apply(evacuate)
	on = vmsOn(t, c)
	if len(on["host-a"])+len(on["host-c"]) != 3 {
		t.Fatalf("after the evacuation: %v, want all three VMs on host-a and host-c", on)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	state, err := f.w.Stdout(ctx, "show", "-json", "-no-color")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(state, `"host":"host-b"`) {
		t.Fatalf("the state still records objects on host-b:\n%s", state)
	}
	f.planEmpty(evacuate, "after the evacuation")
	f.destroy(evacuate)
}
