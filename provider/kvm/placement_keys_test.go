package kvm

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"

	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// placementKeysHCL is a stopped VM on host-a with a disk encrypted with
// key "prod", and a placement of its key (no host_labels) over the given
// hosts.
func placementKeysHCL(c *harness.Cluster, placementHosts string) string {
	return c.ProviderHCL() + `
resource "kvm_disk" "secret" {
  name       = "pk-secret"
  host       = "host-a"
  size_mib   = 64
  encryption = { key = "prod" }
}

resource "kvm_vm" "sec" {
  name       = "sec"
  host       = "host-a"
  vcpu       = 1
  memory_mib = 256
  running    = false
  disks      = [{ disk_id = kvm_disk.secret.id }]
}

resource "kvm_cluster_placement" "p" {
  hosts   = ` + placementHosts + `
  request = { sec = { vcpu = 1, memory_mib = 256 } }
}
`
}

// TestAccPlacementEncryptionKey: host-a and host-b hold key "prod", host-c
// holds none. Placement infers the key from the VM's encrypted disk: with
// host-a gone from the candidates, the VM's key fails at plan time, naming
// the key and each host with the keys it holds, when only host-c remains,
// and goes to host-b, never host-c, when both do (host-c, listed first
// and as empty, would do otherwise).
func TestAccPlacementEncryptionKey(t *testing.T) {
	keyDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(keyDir, "prod.key"), []byte("0123456789abcdef0123456789abcdef-test-master-key"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := startHosts(t, harness.Options{
		Hosts: []string{"host-a", "host-b", "host-c"}, ExtraArgs: vmTestHostArgs,
		ExtraHostArgs: map[string][]string{"host-a": {"--key-dir", keyDir}, "host-b": {"--key-dir", keyDir}},
	})
	assigned := func(host string) []statecheck.StateCheck {
		return []statecheck.StateCheck{statecheck.ExpectKnownValue("kvm_cluster_placement.p",
			tfjsonpath.New("assignments").AtMapKey("sec"), knownvalue.StringExact(host))}
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{Config: placementKeysHCL(c, `["host-a"]`), ConfigStateChecks: assigned("host-a")},
			{
				Config:      placementKeysHCL(c, `["host-c"]`),
				ExpectError: regexp.MustCompile(`(?s)Encryption Key Not Held.*VM sec has the encrypted disk\s+default/pk-secret\s+\(encryption\s+key\s+"prod"\).*host-c\s+\(keys:\s+none\)`),
			},
			{Config: placementKeysHCL(c, `["host-c", "host-b"]`), ConfigStateChecks: assigned("host-b")},
		},
	})
}
