package kvm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
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
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

func testAccEncryptionConfig(c *harness.Cluster, diskHost, key, extra string) string {
	return c.ProviderHCL() + fmt.Sprintf(`
data "kvm_host" "a" {
  name = "host-a"
}

data "kvm_host" "b" {
  name = "host-b"
}

resource "kvm_cluster_placement" "enc" {
  request = {
    "enc" = { vcpu = 1, memory_mib = 64, host_labels = { "key.prod" = "true" } }
  }
}

resource "kvm_disk" "secret" {
  name       = "secret"
  host       = %q
  size_mib   = 64
  encryption = { key = %q }
}

resource "kvm_vm" "enc" {
  name       = "enc"
  host       = %q
  vcpu       = 1
  memory_mib = 256
  disks      = [{ disk_id = kvm_disk.secret.id }]
}
%s`, diskHost, key, diskHost, extra)
}

// Encrypted disks on libvirt's test driver: host-a holds key "prod",
// host-b none. The disk and its VM round-trip (empty plan, import); hosts
// report their key names; a disk on a host without its key fails at plan
// time naming host and key; placement by the key.NAME label picks the
// host holding the key; changing the key is a replace; an encrypted
// linked clone and a snapshot of the VM are refused.
func TestAccDisk_encryption(t *testing.T) {
	keyDir := t.TempDir()
	key := []byte("0123456789abcdef0123456789abcdef-test-master-key")
	for _, name := range []string{"prod", "other"} {
		if err := os.WriteFile(filepath.Join(keyDir, name+".key"), key, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c := startHosts(t, harness.Options{
		Hosts: []string{"host-a", "host-b"}, ExtraArgs: vmTestHostArgs,
		ExtraHostArgs: map[string][]string{"host-a": {"--key-dir", keyDir}},
	})
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config: testAccEncryptionConfig(c, "host-a", "prod", ""),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_disk.secret", tfjsonpath.New("encryption").AtMapKey("key"), knownvalue.StringExact("prod")),
					statecheck.ExpectKnownValue("data.kvm_host.a", tfjsonpath.New("keys"),
						knownvalue.ListExact([]knownvalue.Check{knownvalue.StringExact("other"), knownvalue.StringExact("prod")})),
					statecheck.ExpectKnownValue("data.kvm_host.b", tfjsonpath.New("keys"), knownvalue.ListSizeExact(0)),
					statecheck.ExpectKnownValue("data.kvm_host.a", tfjsonpath.New("labels").AtMapKey("key.prod"), knownvalue.StringExact("true")),
					// Placement by the key label: only host-a holds "prod".
					statecheck.ExpectKnownValue("kvm_cluster_placement.enc", tfjsonpath.New("assignments").AtMapKey("enc"), knownvalue.StringExact("host-a")),
				},
				Check: func(st *terraform.State) error {
					for _, r := range st.RootModule().Resources {
						for k, v := range r.Primary.Attributes {
							if strings.Contains(v, string(key)) {
								return fmt.Errorf("%s.%s holds the master key", r.Type, k)
							}
						}
					}
					if strings.Contains(c.Host("host-a").Log(), string(key)) {
						return fmt.Errorf("host-a's log holds the master key")
					}
					ctx := context.Background()
					// The API: inventory and volume name the key, never hold it.
					h, err := testAccVMClient(t, c, "host-a").Host(ctx)
					if err != nil {
						return err
					}
					v, err := testAccVMClient(t, c, "host-a").GetVolume(ctx, "default", "secret")
					if err != nil {
						return err
					}
					b, _ := json.Marshal([]any{h, v})
					if strings.Contains(string(b), string(key)) || v.Encryption == nil || v.Encryption.Key != "prod" {
						return fmt.Errorf("API responses: %s", b)
					}
					// host-b, without the key, refuses such a volume: 409 naming host and key.
					_, err = testAccVMClient(t, c, "host-b").PutVolume(ctx, "default", "x",
						api.VolumeSpec{SizeMiB: 1, Encryption: &api.VolumeEncryption{Key: "prod"}})
					if !api.IsCode(err, api.CodeConflict) || !strings.Contains(err.Error(), `host host-b does not hold encryption key "prod"`) {
						return fmt.Errorf("host-b accepted an encrypted volume without the key, or said so unclearly: %v", err)
					}
					return nil
				},
			},
			{
				ResourceName: "kvm_disk.secret", ImportState: true, ImportStateVerify: true,
				ImportStateVerifyIgnore: []string{"timeouts"},
			},
			{
				// A snapshot of a VM with an encrypted disk is refused.
				Config: testAccEncryptionConfig(c, "host-a", "prod", `
resource "kvm_snapshot" "s" {
  vm_id          = kvm_vm.enc.id
  name           = "s1"
  include_memory = true
}
`),
				ExpectError: regexp.MustCompile(`(?s)encrypted.*not\s+supported`),
			},
			{
				// A linked clone of the encrypted disk: refused at plan time.
				Config: testAccEncryptionConfig(c, "host-a", "prod", `
resource "kvm_disk" "clone" {
  name         = "clone"
  host         = "host-a"
  base_disk_id = kvm_disk.secret.id
}
`),
				PlanOnly:    true,
				ExpectError: regexp.MustCompile(`(?s)Linked Clone of an Encrypted Disk`),
			},
			{
				// host-b does not hold the key: the plan says so.
				Config:      testAccEncryptionConfig(c, "host-b", "prod", ""),
				PlanOnly:    true,
				ExpectError: regexp.MustCompile(`(?s)host host-b does not hold encryption key\s+"prod"`),
			},
			{
				Config: testAccEncryptionConfig(c, "host-a", "prod", looseDisk("other")),
			},
			{
				// Another key replaces the disk (a disk no VM attaches).
				Config: testAccEncryptionConfig(c, "host-a", "prod", looseDisk("prod")),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_disk.loose", plancheck.ResourceActionDestroyBeforeCreate),
				}},
				Check: resource.TestCheckResourceAttr("kvm_disk.loose", "encryption.key", "prod"),
			},
		},
	})
}

func looseDisk(key string) string {
	return fmt.Sprintf(`
resource "kvm_disk" "loose" {
  name       = "loose"
  host       = "host-a"
  size_mib   = 16
  encryption = { key = %q }
}
`, key)
}
