package kvm

import (
	"context"
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// testAccPoolHosts: libvirt's test driver ships a 100 GiB dir pool
// "default-pool". host-a and host-c serve it as shared, host-b serves it
// as a local pool.
func testAccPoolHosts(t *testing.T) *harness.Cluster {
	return startHosts(t, harness.Options{
		Hosts:     []string{"host-a", "host-b", "host-c"},
		ExtraArgs: []string{"--memory-overcommit", "10", "--pool", "default-pool"},
		ExtraHostArgs: map[string][]string{
			"host-a": {"--shared-pool", "default-pool"},
			"host-c": {"--shared-pool", "default-pool"},
		},
	})
}

// poolsTestHCL is a VM on host-a with one disk on the shared pool and one
// local disk, a kvm_host read of host-a, and a placement of the VM's key
// over the given hosts.
func poolsTestHCL(c *harness.Cluster, placementHosts string) string {
	return c.ProviderHCL() + `
data "kvm_host" "a" { name = "host-a" }

resource "kvm_disk" "shared" {
  name     = "pools-shared"
  host     = "host-a"
  pool     = "default-pool"
  size_mib = 512
}

resource "kvm_disk" "local" {
  name     = "pools-local"
  host     = "host-a"
  size_mib = 1024
}

resource "kvm_vm" "pools" {
  name       = "pools"
  host       = "host-a"
  vcpu       = 1
  memory_mib = 256
  running    = false
  disks      = [{ disk_id = kvm_disk.shared.id }, { disk_id = kvm_disk.local.id }]
}

resource "kvm_cluster_placement" "p" {
  hosts   = ` + placementHosts + `
  request = { pools = { vcpu = 1, memory_mib = 256 } }
}
`
}

// TestAccPools: kvm_host reports the served pools; a kvm_disk goes into the
// pool it names and round-trips; a pool the host does not serve and a disk
// larger than the pool's free space fail at plan time; placement keeps a
// VM with a disk on a shared pool on hosts that share that pool, and
// fails, naming the pool, when none of the candidates does.
func TestAccPools(t *testing.T) {
	c := testAccPoolHosts(t)
	pool := func(i int, attr string) tfjsonpath.Path {
		return tfjsonpath.New("pools").AtSliceIndex(i).AtMapKey(attr)
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config: poolsTestHCL(c, `["host-a"]`),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("data.kvm_host.a", pool(0, "name"), knownvalue.StringExact("default")),
					statecheck.ExpectKnownValue("data.kvm_host.a", pool(0, "shared"), knownvalue.Bool(false)),
					statecheck.ExpectKnownValue("data.kvm_host.a", pool(1, "name"), knownvalue.StringExact("default-pool")),
					statecheck.ExpectKnownValue("data.kvm_host.a", pool(1, "type"), knownvalue.StringExact("dir")),
					statecheck.ExpectKnownValue("data.kvm_host.a", pool(1, "shared"), knownvalue.Bool(true)),
					statecheck.ExpectKnownValue("data.kvm_host.a", pool(1, "capacity_mib"), knownvalue.Int64Exact(100<<10)),
					statecheck.ExpectKnownValue("kvm_disk.shared", tfjsonpath.New("id"), knownvalue.StringExact("host-a/default-pool/pools-shared")),
					statecheck.ExpectKnownValue("kvm_cluster_placement.p", tfjsonpath.New("assignments").AtMapKey("pools"), knownvalue.StringExact("host-a")),
				},
			},
			{
				ResourceName:            "kvm_disk.shared",
				ImportState:             true,
				ImportStateVerify:       true,
				ImportStateVerifyIgnore: []string{"timeouts"},
			},
			{
				Config:      poolsTestHCL(c, `["host-b"]`),
				ExpectError: regexp.MustCompile(`shared-pool\.default-pool`),
			},
			{
				// host-a leaves the candidates: the VM's key may only go
				// to host-c, which shares default-pool (the step before:
				// host-b alone, which does not, fails).
				Config: poolsTestHCL(c, `["host-b", "host-c"]`),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_cluster_placement.p", tfjsonpath.New("assignments").AtMapKey("pools"), knownvalue.StringExact("host-c")),
				},
			},
			{
				Config: poolsTestHCL(c, `["host-c"]`) + `
resource "kvm_disk" "elsewhere" {
  name     = "pools-elsewhere"
  host     = "host-a"
  pool     = "ceph1"
  size_mib = 1
}
`,
				ExpectError: regexp.MustCompile(`(?s)Pool Not Served.*host host-a does not serve pool "ceph1"`),
			},
			{
				Config: poolsTestHCL(c, `["host-c"]`) + `
resource "kvm_disk" "huge" {
  name     = "pools-huge"
  host     = "host-a"
  pool     = "default-pool"
  size_mib = 204800
}
`,
				ExpectError: regexp.MustCompile(`(?s)Disk Does Not Fit.*needs 204800 MiB on host host-a, but pool\s+default-pool has \d+ MiB free of 102400 MiB`),
			},
		},
	})
}

// TestPlanMigrationStorage: the plan's migration warning counts the disks
// a move copies (with their GiB) and those that stay on a shared pool,
// and a move to a host that does not share the pool is a problem.
func TestPlanMigrationStorage(t *testing.T) {
	c := testAccPoolHosts(t)
	ctx := context.Background()
	fleet := &Fleet{hosts: map[string]*FleetHost{}}
	for _, h := range c.Hosts {
		cl, err := client.New(client.Options{Endpoint: h.URL, Token: c.Token})
		if err != nil {
			t.Fatal(err)
		}
		fleet.hosts[h.Name] = &FleetHost{Name: h.Name, Endpoint: h.URL, Client: cl}
	}
	a := fleet.hosts["host-a"]
	if _, err := a.Client.PutVolume(ctx, "default", "mig-local", api.VolumeSpec{SizeMiB: 1536}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Client.PutVolume(ctx, "default-pool", "mig-shared", api.VolumeSpec{SizeMiB: 4096}); err != nil {
		t.Fatal(err)
	}
	disks := []api.VMDisk{{Pool: "default-pool", Volume: "mig-shared"}, {Pool: "default", Volume: "mig-local"}}

	ms, err := planMigrationStorage(ctx, a, fleet.hosts["host-c"], disks)
	if err != nil {
		t.Fatal(err)
	}
	want := "VM vm1 moves from host host-a to host host-c; its disks default/mig-local (1.5 GiB) move by copy, 1.5 GiB in total " +
		"(at most: a linked clone copies only what it holds over its base). Disks on shared pools stay in place: default-pool/mig-shared."
	if got := ms.message("vm1", "host-a", "host-c"); got != want || len(ms.problems) > 0 {
		t.Fatalf("warning:\n%s\nwant\n%s\nproblems %v", got, want, ms.problems)
	}
	ms, err = planMigrationStorage(ctx, a, fleet.hosts["host-c"], disks[:1])
	if err != nil {
		t.Fatal(err)
	}
	if got := ms.message("vm1", "host-a", "host-c"); !strings.Contains(got, "with no storage copy: all its disks are on shared pools (default-pool/mig-shared)") {
		t.Fatalf("all shared: %s", got)
	}
	ms, err = planMigrationStorage(ctx, a, fleet.hosts["host-b"], disks)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms.problems) != 1 || !strings.Contains(ms.problems[0], "host host-b does not serve as a shared pool") {
		t.Fatalf("to a host that does not share the pool: %v", ms.problems)
	}
}
