package kvm

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"

	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// testAccCheckDiskGone checks that a volume is not on a host.
func testAccCheckDiskGone(cl *client.Client, pool, name string) resource.TestCheckFunc {
	return func(*terraform.State) error {
		_, err := cl.GetVolume(context.Background(), pool, name)
		if err == nil {
			return fmt.Errorf("volume %s/%s is still on %s", pool, name, cl.Endpoint())
		}
		if !isNotFound(err) {
			return err
		}
		return nil
	}
}

// testAccCheckVolume checks a volume's format, size, base and allocation
// (the test driver reports as allocated what was written into a volume, so
// an allocation that moves with the disk shows its contents were copied).
func testAccCheckVolume(cl *client.Client, pool, name, format string, sizeMiB int64, base string, allocatedMiB int64) resource.TestCheckFunc {
	return func(*terraform.State) error {
		v, err := cl.GetVolume(context.Background(), pool, name)
		if err != nil {
			return err
		}
		if v.Format != format || v.SizeMiB != sizeMiB || v.BaseVolume != base || (allocatedMiB >= 0 && v.AllocatedMiB != allocatedMiB) {
			return fmt.Errorf("volume %s/%s on %s: format %s, %d MiB, base %q, allocated %d MiB; want %s, %d MiB, base %q, allocated %d MiB",
				pool, name, cl.Endpoint(), v.Format, v.SizeMiB, v.BaseVolume, v.AllocatedMiB, format, sizeMiB, base, allocatedMiB)
		}
		return nil
	}
}

func expectUpdate(addr string) resource.ConfigPlanChecks {
	return resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
		plancheck.ExpectResourceAction(addr, plancheck.ResourceActionUpdate),
	}}
}

// A disk that no VM attaches moves between hosts with its contents, as an
// in-place update: the new host copies it from the old one, which then
// deletes its copy.
func TestAccDisk_moveDetached(t *testing.T) {
	image := strings.Repeat("i", 3<<20) // 3 MiB "image"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(image))
	}))
	defer srv.Close()
	c := startHosts(t, harness.Options{Hosts: []string{"host-a", "host-b"}})
	clA, clB := diskTestClient(t, c, "host-a"), diskTestClient(t, c, "host-b")
	cfg := func(host string) string {
		return testAccDiskConfig(c, fmt.Sprintf(`
resource "kvm_disk" "data" {
  name     = "mover"
  host     = %[1]q
  size_mib = 16
  iotune = { read_iops_sec = 100 }
}

resource "kvm_disk" "img" {
  name       = "mover-img"
  host       = %[1]q
  size_mib   = 16
  format     = "raw"
  source_url = %[2]q
}`, host, srv.URL+"/img.raw"))
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config: cfg("host-a"),
				Check: resource.ComposeTestCheckFunc(
					testAccCheckVolume(clA, "default", "mover", "qcow2", 16, "", -1),
					testAccCheckVolume(clA, "default", "mover-img", "raw", 16, "", 3),
				),
			},
			{
				Config: cfg("host-b"),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_disk.data", plancheck.ResourceActionUpdate),
					plancheck.ExpectResourceAction("kvm_disk.img", plancheck.ResourceActionUpdate),
				}},
				Check: resource.ComposeTestCheckFunc(
					testAccCheckVolume(clB, "default", "mover", "qcow2", 16, "", -1),
					testAccCheckVolume(clB, "default", "mover-img", "raw", 16, "", 3),
					testAccCheckDiskGone(clA, "default", "mover"),
					testAccCheckDiskGone(clA, "default", "mover-img"),
				),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_disk.data", tfjsonpath.New("id"), knownvalue.StringExact("host-b/default/mover")),
					statecheck.ExpectKnownValue("kvm_disk.data", tfjsonpath.New("iotune").AtMapKey("read_iops_sec"), knownvalue.Int64Exact(100)),
					statecheck.ExpectKnownValue("kvm_disk.img", tfjsonpath.New("id"), knownvalue.StringExact("host-b/default/mover-img")),
					statecheck.ExpectKnownValue("kvm_disk.img", tfjsonpath.New("source_url"), knownvalue.StringExact(srv.URL+"/img.raw")),
					statecheck.ExpectKnownValue("kvm_disk.img", tfjsonpath.New("allocated_mib"), knownvalue.Int64Exact(3)),
				},
			},
			{
				// And back.
				Config:           cfg("host-a"),
				ConfigPlanChecks: expectUpdate("kvm_disk.data"),
				Check: resource.ComposeTestCheckFunc(
					testAccCheckVolume(clA, "default", "mover", "qcow2", 16, "", -1),
					testAccCheckVolume(clA, "default", "mover-img", "raw", 16, "", 3),
					testAccCheckDiskGone(clB, "default", "mover"),
					testAccCheckDiskGone(clB, "default", "mover-img"),
				),
			},
		},
	})
}

// A detached linked clone moves onto the new host's copy of its base; a
// target without the base is refused and nothing changes.
func TestAccDisk_moveDetachedClone(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a", "host-b"}})
	clA, clB := diskTestClient(t, c, "host-a"), diskTestClient(t, c, "host-b")
	bases := `
resource "kvm_disk" "base_a" {
  name     = "gold"
  host     = "host-a"
  size_mib = 8
}

resource "kvm_disk" "base_b" {
  name     = "gold"
  host     = "host-b"
  size_mib = 8
}
`
	cfg := func(host, base string) string {
		return testAccDiskConfig(c, bases+fmt.Sprintf(`
resource "kvm_disk" "clone" {
  name         = "clone-1"
  host         = %q
  base_disk_id = %s
}`, host, base))
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config: cfg("host-a", "kvm_disk.base_a.id"),
				Check:  testAccCheckVolume(clA, "default", "clone-1", "qcow2", 8, "gold", -1),
			},
			{
				Config:           cfg("host-b", "kvm_disk.base_b.id"),
				ConfigPlanChecks: expectUpdate("kvm_disk.clone"),
				Check: resource.ComposeTestCheckFunc(
					testAccCheckVolume(clB, "default", "clone-1", "qcow2", 8, "gold", -1),
					testAccCheckDiskGone(clA, "default", "clone-1"),
					testAccCheckVolume(clA, "default", "gold", "qcow2", 8, "", -1),
				),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_disk.clone", tfjsonpath.New("id"), knownvalue.StringExact("host-b/default/clone-1")),
					statecheck.ExpectKnownValue("kvm_disk.clone", tfjsonpath.New("base_disk_id"), knownvalue.StringExact("host-b/default/gold")),
				},
			},
		},
	})
}

func TestAccDisk_moveDetachedCloneWithoutBase(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a", "host-b"}})
	clA, clB := diskTestClient(t, c, "host-a"), diskTestClient(t, c, "host-b")
	cfg := func(host, base string) string {
		return testAccDiskConfig(c, fmt.Sprintf(`
resource "kvm_disk" "base_a" {
  name     = "gold"
  host     = "host-a"
  size_mib = 8
}

resource "kvm_disk" "clone" {
  name         = "clone-1"
  host         = %q
  base_disk_id = %s
}`, host, base))
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{Config: cfg("host-a", "kvm_disk.base_a.id")},
			{
				Config:      cfg("host-b", `replace(kvm_disk.base_a.id, "host-a/", "host-b/")`),
				ExpectError: regexp.MustCompile(`(?s)Unable to Move Disk.*only\s+if\s+host-b\s+has\s+base\s+volume\s+gold.*Nothing\s+was\s+deleted:\s+the\s+disk\s+stays\s+on\s+host\s+host-a`),
			},
			{
				Config:   cfg("host-a", "kvm_disk.base_a.id"),
				PlanOnly: true,
				Check: resource.ComposeTestCheckFunc(
					testAccCheckVolume(clA, "default", "clone-1", "qcow2", 8, "gold", -1),
					testAccCheckDiskGone(clB, "default", "clone-1"),
				),
			},
		},
	})
}
