package kvm

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"

	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// A CI plan check runs with the hosts' read-only token: refresh and plan
// of every resource type work with it and show no changes, and an apply
// with it fails on its first write with nothing changed.
func TestAccReadOnlyToken_planInCI(t *testing.T) {
	readToken := "ci-read-only-" + strings.Repeat("r", 16)
	tokenFile := filepath.Join(t.TempDir(), "read-token")
	if err := os.WriteFile(tokenFile, []byte(readToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := startHosts(t, harness.Options{
		Hosts:     []string{"host-a", "host-b"},
		ExtraArgs: []string{"--read-token-file", tokenFile},
	})
	resources := func(size int) string {
		return `
data "kvm_hosts" "all" {}
data "kvm_host" "a" { name = "host-a" }

resource "kvm_network" "ro" {
  name = "ro-net"
  vlan = 7
}

resource "kvm_cluster_placement" "ro" {
  request = {
    "ro-1" = { vcpu = 1, memory_mib = 64 }
  }
}

resource "kvm_disk" "ro" {
  name     = "ro-disk"
  host     = kvm_cluster_placement.ro.assignments["ro-1"]
  size_mib = ` + strconv.Itoa(size) + `
}

resource "kvm_vm" "ro" {
  name               = "ro-1"
  host               = kvm_cluster_placement.ro.assignments["ro-1"]
  vcpu               = 1
  memory_mib         = 64
  disks              = [{ disk_id = kvm_disk.ro.id }]
  network_interfaces = [{ network = kvm_network.ro.name }]
  shutdown_timeout   = 0
}

resource "kvm_snapshot" "ro" {
  vm_id          = kvm_vm.ro.id
  name           = "ro-snap"
  include_memory = true
}
`
	}
	full := c.ProviderHCL()
	readOnly := strings.Replace(full, c.Token, readToken, 1)
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{Config: full + resources(32)},
			// The CI check: refresh + plan with the read-only token.
			{Config: readOnly + resources(32), PlanOnly: true},
			// A change planned in CI cannot be applied with that token.
			{Config: readOnly + resources(48), ExpectError: regexp.MustCompile(`(?i)forbidden|read-only token`)},
			// Nothing was changed: the original config is still empty to plan.
			{Config: full + resources(32), PlanOnly: true},
		},
	})
}
