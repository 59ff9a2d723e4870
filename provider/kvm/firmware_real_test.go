package kvm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"

	"github.com/kvmfleet/terraform-provider-kvm/internal/guestimage"
	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

const firmwareProbePath = "/usr/local/sbin/firmwareprobe" // /run is noexec

// firmwareHCL is one UEFI Secure Boot guest on a linked clone of the guest
// image that both hosts fetched: host and tpm and running vary by step.
func firmwareHCL(providerHCL, imageURL, host string, tpm, running bool) string {
	extra := ""
	if tpm {
		extra += "  tpm         = { version = \"2.0\" }\n"
	}
	if !running {
		extra += "  running     = false\n"
	}
	return providerHCL + fmt.Sprintf(`
locals {
  host = %q
}

resource "kvm_disk" "base_a" {
  name       = "fw-base"
  host       = "host-a"
  format     = "qcow2"
  source_url = %q
}

resource "kvm_disk" "base_b" {
  name       = "fw-base"
  host       = "host-b"
  format     = "qcow2"
  source_url = %q
}

resource "kvm_disk" "root" {
  name         = "fw-root"
  host         = local.host
  base_disk_id = local.host == "host-a" ? kvm_disk.base_a.id : kvm_disk.base_b.id
}

resource "kvm_vm" "fw" {
  name             = "fw"
  host             = local.host
  vcpu             = 1
  memory_mib       = 384
  shutdown_timeout = 120
  firmware         = "efi"
  secure_boot      = true
%s  disks            = [{ disk_id = kvm_disk.root.id }]
  cloud_init       = { meta_data = "instance-id: fw\nlocal-hostname: fw\n" }
}
`, host, imageURL, imageURL, extra)
}

// TestAccFirmwareReal proves firmware, Secure Boot, NVRAM and TPM on real
// QEMU with the guest image, on ONE guest: it boots UEFI with Secure Boot
// on (as the guest's own SecureBoot variable says) and sets a UEFI
// variable; adding a TPM is one restart with the same UUID, after which
// the guest has /dev/tpmrm0 and the variable; a value in the TPM's NV
// storage survives a guest reboot, a live migration to a second host and
// a cold restart there, and so do the UEFI variable set before the
// migration (libvirt does not copy NVRAM; kvm-hostd does) and one set on
// the new host. No NVRAM or TPM state is left on the old host after the
// migration, nor on the new one after the delete.
func TestAccFirmwareReal(t *testing.T) {
	realstack.Require(t, "libvirtd", "virtlogd", "virsh", "nsenter", "ip", "qemu-system-x86_64", "swtpm", "swtpm_setup")
	if _, err := os.Stat("/usr/share/qemu/firmware"); err != nil {
		t.Skip("no UEFI firmware descriptors (install ovmf)")
	}
	testAccPreCheck(t)
	parallelNSHostTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	start := time.Now()
	image, err := guestimage.Path(ctx)
	if err != nil {
		t.Fatal(err)
	}
	probeTool := buildGuestTool(t, "./internal/firmwareprobe")
	hs := realstack.StartHostNamespaces(ctx, t, realstack.HostsOptions{Names: []string{"a", "b"}})
	ha, hb := hs.Host("a"), hs.Host("b")
	byHost := map[string]*realstack.NSHost{"host-a": ha, "host-b": hb}

	imageURL := serveGuestImage(t, image)

	const poolDir = "/var/lib/libvirt/images/kvm-firmware-test"
	c := startMigrationHosts(t, byHost, poolDir)
	hcl := func(host string, tpm, running bool) string {
		return firmwareHCL(c.ProviderHCL(), imageURL, host, tpm, running)
	}
	agentOn := func(h *realstack.NSHost) guestAgent { return guestAgent{h: h, domain: "fw", logf: t.Logf} }
	// probe runs the tool in the guest on h and returns its trimmed output.
	probe := func(h *realstack.NSHost, args ...string) (string, error) {
		out, err := agentOn(h).run(ctx, firmwareProbePath, args...)
		return strings.TrimSpace(out), err
	}
	expect := func(h *realstack.NSHost, want string, args ...string) error {
		got, err := probe(h, args...)
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("firmwareprobe %s on %s: %q, want %q", strings.Join(args, " "), h.Name, got, want)
		}
		return nil
	}
	ready := func(h *realstack.NSHost) error {
		t0 := time.Now()
		if err := agentOn(h).waitReady(ctx, 12*time.Minute); err != nil {
			return fmt.Errorf("%w\n%s", err, guestConsole(h, "fw"))
		}
		t.Logf("guest agent on %s answers after %s (test at %s)", h.Name, time.Since(t0).Round(time.Second), time.Since(start).Round(time.Second))
		return nil
	}
	nvramFile := func(h *realstack.NSHost) string {
		return filepath.Join(h.StateDir, "lib", "qemu", "nvram", "fw_VARS.fd")
	}
	var uuid string
	tpmDir := func(h *realstack.NSHost) string { return filepath.Join(h.StateDir, "lib", "swtpm", uuid) }
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	sameVM := func(st *terraform.State) error {
		id := st.RootModule().Resources["kvm_vm.fw"].Primary.ID
		if id != uuid {
			return fmt.Errorf("VM id %s, was %s: re-created", id, uuid)
		}
		return nil
	}
	var qemuStart time.Time
	update := resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{plancheck.ExpectResourceAction("kvm_vm.fw", plancheck.ResourceActionUpdate)}}

	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy: func(*terraform.State) error {
			for _, h := range []*realstack.NSHost{ha, hb} {
				if exists(nvramFile(h)) || exists(tpmDir(h)) {
					return fmt.Errorf("after the delete %s still has NVRAM (%v) or TPM state (%v)", h.Name, exists(nvramFile(h)), exists(tpmDir(h)))
				}
			}
			return nil
		},
		Steps: []resource.TestStep{
			{
				// UEFI with Secure Boot; a variable into its NVRAM.
				Config: hcl("host-a", false, true),
				Check: func(st *terraform.State) error {
					uuid = st.RootModule().Resources["kvm_vm.fw"].Primary.ID
					if err := ready(ha); err != nil {
						return err
					}
					if err := agentOn(ha).writeFile(ctx, firmwareProbePath, probeTool); err != nil {
						return err
					}
					if err := expect(ha, "1", "secureboot"); err != nil {
						return err
					}
					if _, err := probe(ha, "efivar-set", "KvmProof", "set-on-host-a"); err != nil {
						return err
					}
					if !exists(nvramFile(ha)) {
						return fmt.Errorf("no NVRAM file %s on host-a", nvramFile(ha))
					}
					var err error
					qemuStart, err = guestQEMUStart(ha, "fw")
					return err
				},
			},
			{
				// A TPM added: one restart, same VM; then a guest reboot.
				Config:           hcl("host-a", true, true),
				ConfigPlanChecks: update,
				Check: func(st *terraform.State) error {
					if err := sameVM(st); err != nil {
						return err
					}
					if err := ready(ha); err != nil {
						return err
					}
					if s, err := guestQEMUStart(ha, "fw"); err != nil || !s.After(qemuStart) {
						return fmt.Errorf("QEMU was not restarted for the TPM (started %s, before %s): %v", s, qemuStart, err)
					}
					if _, err := agentOn(ha).run(ctx, "/bin/ls", "-l", "/dev/tpm0", "/dev/tpmrm0"); err != nil {
						return fmt.Errorf("no TPM device in the guest: %w", err)
					}
					if err := expect(ha, "set-on-host-a", "efivar-get", "KvmProof"); err != nil {
						return fmt.Errorf("after the restart: %w", err)
					}
					if _, err := probe(ha, "tpm-nv-write", "tpm-on-host-a"); err != nil {
						return err
					}
					if err := expect(ha, "tpm-on-host-a", "tpm-nv-read"); err != nil {
						return err
					}
					if !exists(tpmDir(ha)) {
						return fmt.Errorf("no TPM state %s on host-a", tpmDir(ha))
					}
					// A reboot from inside: /run is a fresh tmpfs after it.
					if err := agentOn(ha).reboot(ctx, 12*time.Minute); err != nil {
						return err
					}
					t.Logf("guest rebooted (test at %s)", time.Since(start).Round(time.Second))
					if err := expect(ha, "tpm-on-host-a", "tpm-nv-read"); err != nil {
						return fmt.Errorf("after the guest reboot: %w", err)
					}
					return expect(ha, "set-on-host-a", "efivar-get", "KvmProof")
				},
			},
			{
				// Live migration to host-b: TPM and NVRAM move along.
				Config:           hcl("host-b", true, true),
				ConfigPlanChecks: update,
				Check: func(st *terraform.State) error {
					if err := sameVM(st); err != nil {
						return err
					}
					t.Logf("migrated (test at %s)", time.Since(start).Round(time.Second))
					if err := ready(hb); err != nil {
						return err
					}
					if err := expect(hb, "tpm-on-host-a", "tpm-nv-read"); err != nil {
						return fmt.Errorf("after the migration: %w", err)
					}
					if err := expect(hb, "set-on-host-a", "efivar-get", "KvmProof"); err != nil {
						return fmt.Errorf("after the migration: %w", err)
					}
					// Written on the new host: into its copy of the NVRAM.
					if _, err := probe(hb, "efivar-set", "KvmProofB", "set-on-host-b"); err != nil {
						return err
					}
					if _, err := probe(hb, "tpm-nv-write", "tpm-on-host-b"); err != nil {
						return err
					}
					if exists(nvramFile(ha)) || exists(tpmDir(ha)) {
						return fmt.Errorf("host-a keeps NVRAM (%v) or TPM state (%v) of the VM that left", exists(nvramFile(ha)), exists(tpmDir(ha)))
					}
					if !exists(nvramFile(hb)) || !exists(tpmDir(hb)) {
						return fmt.Errorf("host-b lacks NVRAM (%v) or TPM state (%v)", exists(nvramFile(hb)), exists(tpmDir(hb)))
					}
					return nil
				},
			},
			{
				// A cold restart on host-b: what the guest sees now comes
				// from the files on host-b only.
				Config:           hcl("host-b", true, false),
				ConfigPlanChecks: update,
			},
			{
				Config:           hcl("host-b", true, true),
				ConfigPlanChecks: update,
				Check: func(st *terraform.State) error {
					if err := sameVM(st); err != nil {
						return err
					}
					if err := ready(hb); err != nil {
						return err
					}
					if err := expect(hb, "1", "secureboot"); err != nil {
						return err
					}
					for name, want := range map[string]string{"KvmProof": "set-on-host-a", "KvmProofB": "set-on-host-b"} {
						if err := expect(hb, want, "efivar-get", name); err != nil {
							return fmt.Errorf("after the cold restart on host-b: %w", err)
						}
					}
					if err := expect(hb, "tpm-on-host-b", "tpm-nv-read"); err != nil {
						return fmt.Errorf("after the cold restart on host-b: %w", err)
					}
					t.Logf("all checks passed (test at %s)", time.Since(start).Round(time.Second))
					return nil
				},
			},
		},
	})
	t.Logf("total %s", time.Since(start).Round(time.Second))
}
