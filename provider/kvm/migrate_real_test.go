package kvm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

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

// migrateTestConfig is a running VM on a linked clone of a base that
// exists on both hosts; changing host moves the VM and the clone together.
func migrateTestConfig(providerHCL, host string) string {
	return migrateTestConfigMode(providerHCL, host, "live")
}

func migrateTestConfigMode(providerHCL, host, mode string) string {
	return providerHCL + fmt.Sprintf(`
locals {
  host      = %q
  migration = %q
}

# The base on both hosts (for_each string keys would trip the testing
# framework's state shim, so two resources).
resource "kvm_disk" "base_a" {
  name     = "mig-base"
  host     = "host-a"
  size_mib = 64
}

resource "kvm_disk" "base_b" {
  name     = "mig-base"
  host     = "host-b"
  size_mib = 64
}

resource "kvm_disk" "clone" {
  name         = "mig-clone"
  host         = local.host
  base_disk_id = local.host == "host-a" ? kvm_disk.base_a.id : kvm_disk.base_b.id
}

resource "kvm_vm" "vm" {
  name             = "mig-vm"
  host             = local.host
  vcpu             = 1
  memory_mib       = 64
  shutdown_timeout = 0
  migration        = local.migration
  disks            = [{ disk_id = kvm_disk.clone.id }]
  # Its seed ISO is a CD-ROM libvirt does not copy: kvm-hostd does.
  cloud_init = { user_data = "#cloud-config\nhostname: mig-vm\n" }
}
`, host, mode)
}

// TestAccMigrate_live is issue 5's "done when": two independent libvirt
// hosts (network + mount namespaces, non-shared storage), a running VM on a
// linked clone moves from host-a to host-b by changing host — an in-place
// update of both the kvm_vm and the kvm_disk — keeping its UUID; the clone
// is on host-b and gone from host-a; the plan afterwards is empty.
func TestAccMigrate_live(t *testing.T) {
	realstack.Require(t, "libvirtd", "virtlogd", "nsenter", "ip", "qemu-system-x86_64")
	testAccPreCheck(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	hs := realstack.StartHostNamespaces(ctx, t, realstack.HostsOptions{Names: []string{"a", "b"}})
	t.Logf("namespace hosts up in %s", time.Since(start).Round(time.Millisecond))

	// The production layout: the same pool directory on every host, inside
	// each host's private /var/lib/libvirt (libvirt-qemu can traverse it).
	const poolDir = "/var/lib/libvirt/images/kvm-migrate-test"
	byHost := map[string]*realstack.NSHost{"host-a": hs.Host("a"), "host-b": hs.Host("b")}
	opts := harness.Options{
		Hosts:         []string{"host-a", "host-b"},
		LibvirtURI:    "qemu:///system", // the host's own libvirtd, seen from inside its namespaces
		OVSDB:         "embedded",
		ListenIPs:     map[string]string{},
		ExtraHostArgs: map[string][]string{},
		PoolDirs:      map[string]string{},
		Wrap: func(host string, argv []string) *exec.Cmd {
			return byHost[host].Command(argv[0], argv[1:]...)
		},
	}
	for name, h := range byHost {
		opts.ListenIPs[name] = h.IP
		opts.ExtraHostArgs[name] = []string{"--migration-uri", h.URI}
		opts.PoolDirs[name] = poolDir
	}
	c := startHosts(t, opts)
	clA, clB := testAccVMClient(t, c, "host-a"), testAccVMClient(t, c, "host-b")

	var uuid string
	step1 := time.Now()
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config: migrateTestConfig(c.ProviderHCL(), "host-a"),
				Check: func(*terraform.State) error {
					vm, err := clA.GetVM(context.Background(), "mig-vm")
					if err != nil {
						return err
					}
					if vm.State != api.StateRunning {
						return fmt.Errorf("VM on host-a is %s, want running", vm.State)
					}
					uuid = vm.UUID
					t.Logf("step 1 (create on host-a) took %s", time.Since(step1).Round(time.Millisecond))
					// Data the guest wrote, through the running QEMU.
					return migrateTestDiskIO(ctx, hs.Host("a"), "write", "wrote")
				},
			},
			{
				PreConfig: func() { step1 = time.Now() },
				Config:    migrateTestConfig(c.ProviderHCL(), "host-b"),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_vm.vm", plancheck.ResourceActionUpdate),
					plancheck.ExpectResourceAction("kvm_disk.clone", plancheck.ResourceActionUpdate),
				}},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_vm.vm", tfjsonpath.New("host"), knownvalue.StringExact("host-b")),
					statecheck.ExpectKnownValue("kvm_vm.vm", tfjsonpath.New("state"), knownvalue.StringExact(api.StateRunning)),
					statecheck.ExpectKnownValue("kvm_disk.clone", tfjsonpath.New("id"), knownvalue.StringExact("host-b/default/mig-clone")),
					statecheck.ExpectKnownValue("kvm_disk.clone", tfjsonpath.New("base_disk_id"), knownvalue.StringExact("host-b/default/mig-base")),
				},
				Check: func(*terraform.State) error {
					t.Logf("step 2 (migrate to host-b) took %s", time.Since(step1).Round(time.Millisecond))
					bg := context.Background()
					vm, err := clB.GetVM(bg, "mig-vm")
					if err != nil {
						return fmt.Errorf("VM on host-b: %w", err)
					}
					if vm.State != api.StateRunning || vm.UUID != uuid {
						return fmt.Errorf("VM on host-b: state %s UUID %s, want running with UUID %s", vm.State, vm.UUID, uuid)
					}
					if _, err := clA.GetVM(bg, "mig-vm"); !api.IsNotFound(err) {
						return fmt.Errorf("VM still on host-a (err %v)", err)
					}
					v, err := clB.GetVolumeUsage(bg, "default", "mig-clone")
					if err != nil {
						return fmt.Errorf("clone on host-b: %w", err)
					}
					if v.BaseVolume != "mig-base" || len(v.UsedBy) != 1 || v.UsedBy[0] != "mig-vm" {
						return fmt.Errorf("clone on host-b: base %q used by %v", v.BaseVolume, v.UsedBy)
					}
					if _, err := clA.GetVolume(bg, "default", "mig-clone"); !api.IsNotFound(err) {
						return fmt.Errorf("clone still on host-a (err %v)", err)
					}
					for _, cl := range []*client.Client{clA, clB} {
						if _, err := cl.GetVolume(bg, "default", "mig-base"); err != nil {
							return fmt.Errorf("base volume: %w", err)
						}
					}
					// The cloud-init seed moved with the VM (QEMU on host-b
					// opened it, or the VM would not run there).
					if vm.CloudInit == nil || vm.CloudInit.UserDataSHA256 != api.UserDataHash("#cloud-config\nhostname: mig-vm\n") {
						return fmt.Errorf("VM on host-b lost its cloud_init: %+v", vm.CloudInit)
					}
					if _, err := clB.GetVolume(bg, "default", "mig-vm-cidata.iso"); err != nil {
						return fmt.Errorf("seed ISO on host-b: %w", err)
					}
					if _, err := clA.GetVolume(bg, "default", "mig-vm-cidata.iso"); !api.IsNotFound(err) {
						return fmt.Errorf("seed ISO still on host-a (err %v)", err)
					}
					for _, line := range regexp.MustCompile(`.*domain migrated.*`).FindAllString(c.Host("host-a").Log(), -1) {
						t.Log(line)
					}
					// What the guest wrote on host-a reads back on host-b.
					return migrateTestDiskIO(ctx, hs.Host("b"), "read", "read")
				},
			},
			{
				// And back: the clone's overlay is prepared again on host-a.
				PreConfig: func() { step1 = time.Now() },
				Config:    migrateTestConfig(c.ProviderHCL(), "host-a"),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_vm.vm", plancheck.ResourceActionUpdate),
					plancheck.ExpectResourceAction("kvm_disk.clone", plancheck.ResourceActionUpdate),
				}},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_vm.vm", tfjsonpath.New("host"), knownvalue.StringExact("host-a")),
					statecheck.ExpectKnownValue("kvm_disk.clone", tfjsonpath.New("id"), knownvalue.StringExact("host-a/default/mig-clone")),
				},
				Check: func(*terraform.State) error {
					t.Logf("step 3 (migrate back to host-a) took %s", time.Since(step1).Round(time.Millisecond))
					bg := context.Background()
					vm, err := clA.GetVM(bg, "mig-vm")
					if err != nil || vm.UUID != uuid || vm.State != api.StateRunning {
						return fmt.Errorf("VM on host-a: %v %+v, want running with UUID %s", err, vm, uuid)
					}
					if _, err := clB.GetVolume(bg, "default", "mig-clone"); !api.IsNotFound(err) {
						return fmt.Errorf("clone still on host-b (err %v)", err)
					}
					return migrateTestDiskIO(ctx, hs.Host("a"), "read", "read")
				},
			},
			{
				// Offline: stopped, copied with QEMU paused, started on host-b.
				PreConfig: func() { step1 = time.Now() },
				Config:    migrateTestConfigMode(c.ProviderHCL(), "host-b", "offline"),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_vm.vm", plancheck.ResourceActionUpdate),
				}},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_vm.vm", tfjsonpath.New("host"), knownvalue.StringExact("host-b")),
					statecheck.ExpectKnownValue("kvm_vm.vm", tfjsonpath.New("state"), knownvalue.StringExact(api.StateRunning)),
				},
				Check: func(*terraform.State) error {
					t.Logf("step 4 (offline migration to host-b) took %s", time.Since(step1).Round(time.Millisecond))
					vm, err := clB.GetVM(context.Background(), "mig-vm")
					if err != nil || vm.UUID != uuid {
						return fmt.Errorf("VM on host-b: %v %+v, want UUID %s", err, vm, uuid)
					}
					if _, err := clA.GetVolume(context.Background(), "default", "mig-clone"); !api.IsNotFound(err) {
						return fmt.Errorf("clone still on host-a (err %v)", err)
					}
					return migrateTestDiskIO(ctx, hs.Host("b"), "read", "read")
				},
			},
		},
	})
}

// migrateTestDiskIO writes (or verifies) a 1 MiB pattern at offset 1 MiB of
// mig-vm's clone through the running QEMU (HMP qemu-io on the clone's block
// node), which is safe while the guest runs, unlike touching the file.
func migrateTestDiskIO(ctx context.Context, h *realstack.NSHost, op, want string) error {
	hmp := func(cmd string) (string, error) {
		out, err := exec.CommandContext(ctx, "virsh", "-c", h.URI, "qemu-monitor-command", "mig-vm", "--hmp", cmd).CombinedOutput()
		return string(out), err
	}
	// The guest device's own BlockBackend (a new one on the node would
	// conflict with the device's write permission). QEMU 7 prints qemu-io's
	// answer on its stdout, i.e. into the domain's log on that host.
	const dev = "/machine/peripheral/virtio-disk0/virtio-backend"
	logFile := filepath.Join(h.StateDir, "log", "qemu", "mig-vm.log")
	before, _ := os.ReadFile(logFile)
	out, err := hmp(`qemu-io -d ` + dev + ` "` + op + ` -P 0x5a 1M 1M"`)
	if err != nil {
		return fmt.Errorf("%s pattern on host %s: %v: %s", op, h.Name, err, out)
	}
	var answer string
	for i := 0; i < 20; i++ {
		after, _ := os.ReadFile(logFile)
		if len(after) >= len(before) {
			answer = out + string(after[len(before):])
		}
		if strings.Contains(answer, want+" 1048576/1048576") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(answer, want+" 1048576/1048576") || strings.Contains(answer, "fail") {
		return fmt.Errorf("%s pattern on host %s: %s", op, h.Name, answer)
	}
	return nil
}

// Moving a VM to a host that reports no migration_uri fails before
// anything changes, with an error that says what is missing (embedded
// default: the test driver never gets as far as migrating).
func TestAccMigrate_noMigrationURI(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a", "host-b"}, ExtraArgs: vmTestHostArgs})
	clA, clB := testAccVMClient(t, c, "host-a"), testAccVMClient(t, c, "host-b")
	var uuid string
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config: migrateTestConfig(c.ProviderHCL(), "host-a"),
				Check: func(*terraform.State) error {
					vm, err := clA.GetVM(context.Background(), "mig-vm")
					if err == nil {
						uuid = vm.UUID
					}
					return err
				},
			},
			{
				Config:      migrateTestConfig(c.ProviderHCL(), "host-b"),
				ExpectError: regexp.MustCompile(`(?s)host-b reports no\s+migration_uri.*--migration-uri`),
			},
			{
				// Nothing moved: the plan is still the whole move.
				Config: migrateTestConfig(c.ProviderHCL(), "host-a"),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectEmptyPlan(),
				}},
				Check: func(*terraform.State) error {
					bg := context.Background()
					vm, err := clA.GetVM(bg, "mig-vm")
					if err != nil || vm.UUID != uuid {
						return fmt.Errorf("VM on host-a: %v (UUID %v, want %s)", err, vm, uuid)
					}
					if _, err := clB.GetVM(bg, "mig-vm"); !api.IsNotFound(err) {
						return fmt.Errorf("VM appeared on host-b (err %v)", err)
					}
					if _, err := clB.GetVolume(bg, "default", "mig-clone"); !api.IsNotFound(err) {
						return fmt.Errorf("clone appeared on host-b (err %v)", err)
					}
					if _, err := clA.GetVolume(bg, "default", "mig-clone"); err != nil {
						return fmt.Errorf("clone on host-a: %w", err)
					}
					return nil
				},
			},
		},
	})
}
