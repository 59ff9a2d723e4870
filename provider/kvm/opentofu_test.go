package kvm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

// A representative subset of the acceptance suite runs under OpenTofu too
// (TestAccOpenTofu_*): the quickstart, a VM with its disk and network through
// its whole lifecycle with import, and write-only attributes. The rest of the
// suite runs on Terraform only; these tests are the proof that the provider
// fits OpenTofu users.

// tofuEnv names the OpenTofu binary; scripts/test.sh sets it from
// scripts/tofu-path.sh.
const tofuEnv = "TF_ACC_TOFU_PATH"

// openTofuRegistry is OpenTofu's default registry host: a provider source
// without a host ("kvmfleet/kvm", or the implied hashicorp/kvm) resolves to
// it, not to registry.terraform.io, so the in-process provider must be
// announced under it (TF_REATTACH_PROVIDERS, which terraform-plugin-testing
// builds from TF_ACC_PROVIDER_HOST).
const openTofuRegistry = "registry.opentofu.org"

// tofuFeature is a Terraform feature the provider uses, and the first
// OpenTofu release that has it ("" for none yet). A test under OpenTofu that
// needs one is skipped by version check, naming the reason; the README lists
// the same features (section "OpenTofu").
type tofuFeature struct {
	since string
	why   string
}

var tofuFeatures = map[string]tofuFeature{
	"write_only":        {since: "1.11.0", why: "write-only attributes"},
	"resource_identity": {since: "1.12.0", why: "resource identity"},
	"query":             {why: "list resources and `query` (opentofu/opentofu#3787)"},
	"actions":           {why: "actions and `-invoke` (opentofu/opentofu#3309)"},
}

var tofuVersions sync.Map // binary path -> version string

// tofuVersion returns the version `tofu version -json` reports.
func tofuVersion(t *testing.T, path string) string {
	t.Helper()
	if v, ok := tofuVersions.Load(path); ok {
		return v.(string)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "version", "-json")
	cmd.Env = append(os.Environ(), "CHECKPOINT_DISABLE=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s version -json: %v", path, err)
	}
	// OpenTofu keeps Terraform's key for compatibility.
	var v struct {
		Version string `json:"terraform_version"`
	}
	if err := json.Unmarshal(out, &v); err != nil || v.Version == "" {
		t.Fatalf("%s version -json: %v in %q", path, err, out)
	}
	tofuVersions.Store(path, v.Version)
	return v.Version
}

// versionAtLeast compares dotted release versions (pre-release suffixes are
// ignored: a 1.12.0-rc1 has the features of 1.12.0).
func versionAtLeast(have, want string) bool {
	parse := func(s string) [3]int {
		var out [3]int
		s, _, _ = strings.Cut(s, "-")
		for i, p := range strings.SplitN(s, ".", 3) {
			out[i], _ = strconv.Atoi(p)
		}
		return out
	}
	h, w := parse(have), parse(want)
	for i := range h {
		if h[i] != w[i] {
			return h[i] > w[i]
		}
	}
	return true
}

// tofuLacks returns why OpenTofu version v cannot run a test needing
// features, or "".
func tofuLacks(v string, features ...string) string {
	for _, f := range features {
		ft, ok := tofuFeatures[f]
		switch {
		case !ok:
			panic("unknown OpenTofu feature " + f)
		case ft.since == "":
			return fmt.Sprintf("OpenTofu %s has no %s", v, ft.why)
		case !versionAtLeast(v, ft.since):
			return fmt.Sprintf("OpenTofu %s has no %s (since %s)", v, ft.why, ft.since)
		}
	}
	return ""
}

// openTofu switches the calling test to OpenTofu, after checking that its
// version has the features the test needs (else the test skips, saying
// why). Like modernTerraform it uses t.Setenv, so such tests are not
// parallel. Without the binary the test skips, except under CI.
func openTofu(t *testing.T, features ...string) string {
	t.Helper()
	testAccPreCheck(t)
	path := os.Getenv(tofuEnv)
	if path == "" {
		if realstack.CI() {
			t.Fatalf("%s is not set (make test sets it from scripts/tofu-path.sh)", tofuEnv)
		}
		t.Skipf("set %s to an OpenTofu binary (scripts/tofu-path.sh)", tofuEnv)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%s: %v", tofuEnv, err)
	}
	// OpenTofu warns on stdout, before any JSON, when TF_CLI_CONFIG_FILE
	// names a file that does not exist (Terraform says nothing): give it an
	// empty one instead.
	if rc := os.Getenv("TF_CLI_CONFIG_FILE"); rc != "" {
		if _, err := os.Stat(rc); err != nil {
			empty := filepath.Join(t.TempDir(), "tofu.tfrc")
			if err := os.WriteFile(empty, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			t.Setenv("TF_CLI_CONFIG_FILE", empty)
		}
	}
	if why := tofuLacks(tofuVersion(t, path), features...); why != "" {
		t.Skip(why)
	}
	t.Setenv("TF_ACC_TERRAFORM_PATH", path)
	t.Setenv("TF_ACC_PROVIDER_HOST", openTofuRegistry)
	return path
}

func TestTofuFeatureVersionCheck(t *testing.T) {
	for _, tc := range []struct {
		version  string
		features []string
		lacks    bool
	}{
		{"1.12.6", nil, false},
		{"1.12.6", []string{"write_only", "resource_identity"}, false},
		{"1.10.7", []string{"write_only"}, true},
		{"1.11.0-rc1", []string{"write_only"}, false},
		{"1.11.5", []string{"resource_identity"}, true},
		{"1.12.6", []string{"query"}, true},
		{"1.12.6", []string{"write_only", "actions"}, true},
		{"2.0.0", []string{"resource_identity"}, false},
	} {
		if got := tofuLacks(tc.version, tc.features...) != ""; got != tc.lacks {
			t.Errorf("tofuLacks(%s, %v) = %v, want %v", tc.version, tc.features, got, tc.lacks)
		}
	}
}

// The quickstart applies, plans empty and destroys under OpenTofu, as a user
// runs it: the tofu CLI in examples/quickstart's configuration (source
// "kvmfleet/kvm", hosts and token from KVM_HOSTS and KVM_TOKEN, as `make
// demo` runs it), with the provider binary through dev_overrides.
// terraform-plugin-testing cannot run it: its state shim rejects for_each.
func TestAccOpenTofu_quickstart(t *testing.T) {
	tofu := openTofu(t)
	cfg, err := os.ReadFile(filepath.Join("..", "..", "examples", "quickstart", "main.tf"))
	if err != nil {
		t.Fatal(err)
	}
	c := startHosts(t, harness.Options{
		Hosts:     []string{"host-a", "host-b", "host-c"},
		TunnelIPs: map[string]string{"host-a": "192.0.2.11", "host-b": "192.0.2.12", "host-c": "192.0.2.13"},
	})
	w, err := harness.NewWorkdir(t.TempDir(), "quickstart", tofu, "KVM_HOSTS="+c.KVMHosts(), "KVM_TOKEN="+c.Token)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteConfig(string(cfg)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	destroyed := false
	t.Cleanup(func() {
		if !destroyed {
			if out, err := w.Run(context.Background(), "destroy", "-auto-approve", "-input=false", "-no-color"); err != nil {
				t.Errorf("%v\n%s", err, out)
			}
		}
	})
	if out, err := w.Run(ctx, "apply", "-auto-approve", "-input=false", "-no-color"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	// Anti-affinity: one running web VM on each host; the network on all.
	for _, h := range c.Hosts {
		cl := testAccVMClient(t, c, h.Name)
		vms, err := testAccVMList(cl)
		if err != nil {
			t.Fatal(err)
		}
		if len(vms) != 1 || !strings.HasPrefix(vms[0].Name, "web-") || vms[0].State != api.StateRunning {
			t.Fatalf("host %s has VMs %+v, want one running web-N", h.Name, vms)
		}
		if _, err := cl.GetNetwork(ctx, "app"); err != nil {
			t.Fatalf("host %s: network app: %v", h.Name, err)
		}
	}
	var outputs map[string]struct {
		Value json.RawMessage `json:"value"`
	}
	out, err := w.Stdout(ctx, "output", "-json")
	if err != nil || json.Unmarshal([]byte(out), &outputs) != nil {
		t.Fatalf("tofu output -json: %v\n%s", err, out)
	}
	if !strings.Contains(string(outputs["snapshot"].Value), "before-upgrade") {
		t.Fatalf("output snapshot = %s", outputs["snapshot"].Value)
	}
	// A second plan is empty (exit code 0, not 2).
	if out, err := w.Run(ctx, "plan", "-detailed-exitcode", "-input=false", "-no-color"); err != nil {
		t.Fatalf("the plan after apply is not empty: %v\n%s", err, out)
	}
	if out, err := w.Run(ctx, "destroy", "-auto-approve", "-input=false", "-no-color"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	destroyed = true
	if err := resource.ComposeAggregateTestCheckFunc(testAccCheckVMDestroy(c), testAccCheckNetworkGone(t, c, "app"))(nil); err != nil {
		t.Fatal(err)
	}
}

func testAccOpenTofuLifecycleConfig(c *harness.Cluster, memory int, team string) string {
	return c.ProviderHCL() + fmt.Sprintf(`
resource "kvm_network" "lan" {
  name  = "tofu-lan"
  hosts = ["host-a"]
  vlan  = 42
}

resource "kvm_disk" "root" {
  name     = "tofu-1-root"
  host     = "host-a"
  size_mib = 64
}

resource "kvm_vm" "vm" {
  name               = "tofu-1"
  host               = "host-a"
  vcpu               = 1
  memory_mib         = %d
  max_memory_mib     = 512
  disks              = [{ disk_id = kvm_disk.root.id }]
  network_interfaces = [{ network = kvm_network.lan.name }]
  tags               = { team = %q }
}
`, memory, team)
}

// A VM with its disk and network under OpenTofu: create, a live update in
// place, and import of all three giving the same state.
func TestAccOpenTofu_vmDiskNetworkLifecycle(t *testing.T) {
	openTofu(t)
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs})
	cl := testAccVMClient(t, c, "host-a")
	var uuid string
	sameVM := testAccCheckVMOnHost(cl, "tofu-1", func(vm *api.VM) error {
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
		CheckDestroy: resource.ComposeAggregateTestCheckFunc(testAccCheckVMDestroy(c),
			testAccCheckNetworkGone(t, c, "tofu-lan")),
		Steps: []resource.TestStep{
			{
				Config: testAccOpenTofuLifecycleConfig(c, 128, "a"),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_vm.vm", tfjsonpath.New("state"), knownvalue.StringExact("running")),
					statecheck.ExpectKnownValue("kvm_vm.vm", tfjsonpath.New("disks").AtSliceIndex(0).AtMapKey("disk_id"),
						knownvalue.StringExact("host-a/default/tofu-1-root")),
					statecheck.ExpectKnownValue("kvm_network.lan", tfjsonpath.New("id"), knownvalue.StringExact("tofu-lan")),
				},
				Check: sameVM,
			},
			{
				// Memory within the ceiling and tags: live, in place.
				Config: testAccOpenTofuLifecycleConfig(c, 256, "b"),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_vm.vm", plancheck.ResourceActionUpdate),
					plancheck.ExpectKnownValue("kvm_vm.vm", tfjsonpath.New("state"), knownvalue.StringExact("running")),
				}},
				Check: resource.ComposeAggregateTestCheckFunc(sameVM, testAccCheckVMOnHost(cl, "tofu-1", func(vm *api.VM) error {
					if vm.MemoryMiB != 256 || vm.Tags["team"] != "b" {
						return fmt.Errorf("update not applied: memory %d, tags %v", vm.MemoryMiB, vm.Tags)
					}
					return nil
				})),
			},
			{
				ResourceName:            "kvm_network.lan",
				ImportState:             true,
				ImportStateId:           "tofu-lan",
				ImportStateVerify:       true,
				ImportStateVerifyIgnore: []string{"timeouts"},
			},
			{
				ResourceName:            "kvm_disk.root",
				ImportState:             true,
				ImportStateId:           "host-a/default/tofu-1-root",
				ImportStateVerify:       true,
				ImportStateVerifyIgnore: []string{"timeouts"},
			},
			{
				ResourceName:      "kvm_vm.vm",
				ImportState:       true,
				ImportStateId:     "host-a/tofu-1",
				ImportStateVerify: true,
			},
		},
	})
}

// Write-only attributes under OpenTofu: the console password reaches the
// host, never the state or the plan, and a new version changes it live.
func TestAccOpenTofu_writeOnly(t *testing.T) {
	openTofu(t, "write_only")
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs})
	cl := testAccVMClient(t, c, "host-a")
	testAccVMPutNetwork(t, cl, "lan")
	cfg := func(version int) string {
		return testAccVMDevicesConfig(c, fmt.Sprintf(`graphics = { type = "vnc", password_wo = "tofu-pw", password_wo_version = %d }`, version), "", "", "")
	}
	noSecret := func(s *terraform.State) error {
		for name, r := range s.RootModule().Resources {
			for k, v := range r.Primary.Attributes {
				if strings.Contains(v, "tofu-pw") {
					return fmt.Errorf("%s.%s holds the write-only password", name, k)
				}
			}
		}
		return nil
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy:             testAccCheckVMDestroy(c),
		Steps: []resource.TestStep{
			{
				Config: cfg(1),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_vm.dev", tfjsonpath.New("graphics").AtMapKey("password_wo"), knownvalue.Null()),
					statecheck.ExpectKnownValue("kvm_vm.dev", tfjsonpath.New("graphics").AtMapKey("password_wo_version"), knownvalue.Int64Exact(1)),
				},
				Check: noSecret,
			},
			{
				// A new version sends the password again: live, no restart.
				Config: cfg(2),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_vm.dev", plancheck.ResourceActionUpdate),
					plancheck.ExpectKnownValue("kvm_vm.dev", tfjsonpath.New("state"), knownvalue.StringExact("running")),
				}},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_vm.dev", tfjsonpath.New("graphics").AtMapKey("password_wo_version"), knownvalue.Int64Exact(2)),
				},
				Check: noSecret,
			},
		},
	})
}

// What the version check skips must really be missing from the OpenTofu
// built for the tests: when a release gains `query` or actions, this fails,
// and the feature moves into the subset above (and out of the README's list).
func TestAccOpenTofu_lacksQueryAndActions(t *testing.T) {
	path := openTofu(t)
	v := tofuVersion(t, path)
	run := func(dir string, args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, path, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "CHECKPOINT_DISABLE=1", "TF_IN_AUTOMATION=1")
		out, _ := cmd.CombinedOutput()
		return string(out)
	}
	if tofuLacks(v, "query") != "" {
		// An unknown subcommand, which tofu says in so many words.
		dir := t.TempDir()
		if out := run(dir, "query", "-help"); !strings.Contains(out, `no command named "query"`) {
			t.Errorf("OpenTofu %s seems to have `query` now; run the list-resource tests under it:\n%s", v, out)
		}
	}
	if tofuLacks(v, "actions") != "" {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "main.tf"), []byte(`action "kvm_vm_power" "restart" {
  config {
    vm_id = "host-a/web-1"
    state = "rebooted"
  }
}
`), 0o644); err != nil {
			t.Fatal(err)
		}
		if out := run(dir, "validate", "-no-color"); !strings.Contains(out, `Unsupported block type`) {
			t.Errorf("OpenTofu %s seems to accept action blocks now; run the action tests under it:\n%s", v, out)
		}
	}
}
