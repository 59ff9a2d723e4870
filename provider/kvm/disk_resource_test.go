package kvm

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
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
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// diskTestClient talks to one harness host directly, as an operator
// acting out of band would.
func diskTestClient(t *testing.T, c *harness.Cluster, host string) *client.Client {
	t.Helper()
	h := c.Host(host)
	if h == nil {
		t.Fatalf("no host %s in the cluster", host)
	}
	cl, err := client.New(client.Options{Endpoint: h.URL, Token: c.Token})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

func testAccCheckDiskExists(cl *client.Client, pool, name string) resource.TestCheckFunc {
	return func(*terraform.State) error {
		_, err := cl.GetVolume(context.Background(), pool, name)
		return err
	}
}

func testAccDiskConfig(c *harness.Cluster, body string) string { return c.ProviderHCL() + body }

func TestAccDisk_basic(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}})
	cl := diskTestClient(t, c, "host-a")
	disk := func(size int, iotune string) string {
		return testAccDiskConfig(c, fmt.Sprintf(`
resource "kvm_disk" "data" {
  name     = "data-1"
  host     = "host-a"
  size_mib = %d
  %s
}`, size, iotune))
	}
	withLimits := `iotune = { read_bytes_sec = 1048576, write_iops_sec = 200 }`
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy: func(*terraform.State) error {
			if _, err := cl.GetVolume(context.Background(), "default", "data-1"); !api.IsNotFound(err) {
				return fmt.Errorf("disk data-1 still exists after destroy (err=%v)", err)
			}
			return nil
		},
		Steps: []resource.TestStep{
			{
				Config: disk(64, withLimits),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_disk.data", plancheck.ResourceActionCreate),
					// The ID is known at plan time, so VMs can reference it.
					plancheck.ExpectKnownValue("kvm_disk.data", tfjsonpath.New("id"), knownvalue.StringExact("host-a/default/data-1")),
				}},
				Check: testAccCheckDiskExists(cl, "default", "data-1"),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_disk.data", tfjsonpath.New("id"), knownvalue.StringExact("host-a/default/data-1")),
					statecheck.ExpectKnownValue("kvm_disk.data", tfjsonpath.New("pool"), knownvalue.StringExact("default")),
					statecheck.ExpectKnownValue("kvm_disk.data", tfjsonpath.New("format"), knownvalue.StringExact("qcow2")),
					statecheck.ExpectKnownValue("kvm_disk.data", tfjsonpath.New("size_mib"), knownvalue.Int64Exact(64)),
					statecheck.ExpectKnownValue("kvm_disk.data", tfjsonpath.New("path"), knownvalue.NotNull()),
					statecheck.ExpectKnownValue("kvm_disk.data", tfjsonpath.New("allocated_mib"), knownvalue.NotNull()),
					statecheck.ExpectKnownValue("kvm_disk.data", tfjsonpath.New("iotune").AtMapKey("read_bytes_sec"), knownvalue.Int64Exact(1048576)),
					statecheck.ExpectKnownValue("kvm_disk.data", tfjsonpath.New("iotune").AtMapKey("read_iops_sec"), knownvalue.Int64Exact(0)),
					statecheck.ExpectKnownValue("kvm_disk.data", tfjsonpath.New("base_disk_id"), knownvalue.Null()),
				},
			},
			{
				// Growing is in place, never a replacement.
				Config: disk(128, withLimits),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_disk.data", plancheck.ResourceActionUpdate),
				}},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_disk.data", tfjsonpath.New("size_mib"), knownvalue.Int64Exact(128)),
				},
				Check: func(*terraform.State) error {
					v, err := cl.GetVolume(context.Background(), "default", "data-1")
					if err != nil {
						return err
					}
					if v.SizeMiB != 128 {
						return fmt.Errorf("host reports %d MiB, want 128", v.SizeMiB)
					}
					return nil
				},
			},
			{
				ResourceName:            "kvm_disk.data",
				ImportState:             true,
				ImportStateId:           "host-a/default/data-1",
				ImportStateVerify:       true,
				ImportStateVerifyIgnore: []string{"timeouts"},
			},
			{
				// Shrinking fails the plan, naming both sizes.
				Config:      disk(32, withLimits),
				PlanOnly:    true,
				ExpectError: regexp.MustCompile(`(?s)Disk Shrink Refused.*128 MiB.*32 MiB`),
			},
			{
				// Limits change in place; removing them clears them.
				Config: disk(128, ""),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_disk.data", plancheck.ResourceActionUpdate),
				}},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_disk.data", tfjsonpath.New("iotune"), knownvalue.Null()),
				},
				Check: func(*terraform.State) error {
					v, err := cl.GetVolume(context.Background(), "default", "data-1")
					if err != nil {
						return err
					}
					if !v.IOTune.IsZero() {
						return fmt.Errorf("host still has limits %+v", *v.IOTune)
					}
					return nil
				},
			},
		},
	})
}

// A linked clone reads its size and base back; the base cannot be deleted
// while the clone exists, and survives the attempt.
func TestAccDisk_linkedClone(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}})
	cl := diskTestClient(t, c, "host-a")
	base := `
resource "kvm_disk" "base" {
  name     = "base"
  host     = "host-a"
  size_mib = 100
}
`
	clone := func(ref string) string {
		return fmt.Sprintf(`
resource "kvm_disk" "clone" {
  name         = "clone"
  host         = "host-a"
  base_disk_id = %s
}
`, ref)
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config: testAccDiskConfig(c, base+clone("kvm_disk.base.id")),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_disk.clone", tfjsonpath.New("base_disk_id"), knownvalue.StringExact("host-a/default/base")),
					statecheck.ExpectKnownValue("kvm_disk.clone", tfjsonpath.New("size_mib"), knownvalue.Int64Exact(100)),
					statecheck.ExpectKnownValue("kvm_disk.clone", tfjsonpath.New("format"), knownvalue.StringExact("qcow2")),
				},
				Check: func(*terraform.State) error {
					v, err := cl.GetVolumeUsage(context.Background(), "default", "base")
					if err != nil {
						return err
					}
					if len(v.Children) != 1 || v.Children[0] != "clone" {
						return fmt.Errorf("base children = %v, want [clone]", v.Children)
					}
					return nil
				},
			},
			{
				ResourceName:            "kvm_disk.clone",
				ImportState:             true,
				ImportStateId:           "host-a/default/clone",
				ImportStateVerify:       true,
				ImportStateVerifyIgnore: []string{"timeouts"},
			},
			{
				// Drop only the base from the configuration (the clone names
				// it literally): the host refuses, and the base is kept.
				Config:      testAccDiskConfig(c, clone(`"host-a/default/base"`)),
				ExpectError: regexp.MustCompile(`(?s)Unable to Delete Disk.*host-a/default/base.*base of volume`),
			},
			{
				Config: testAccDiskConfig(c, base+clone("kvm_disk.base.id")),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectEmptyPlan(),
				}},
				Check: testAccCheckDiskExists(cl, "default", "base"),
			},
			{
				// A clone on another pool or host is refused at plan time.
				Config: testAccDiskConfig(c, base+`
resource "kvm_disk" "other" {
  name         = "other"
  host         = "host-a"
  pool         = "other"
  base_disk_id = kvm_disk.base.id
}`),
				PlanOnly:    true,
				ExpectError: regexp.MustCompile(`Base Disk in Another Pool`),
			},
		},
	})
}

// Deleting the volume out of band shows up as a planned create.
func TestAccDisk_disappears(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}})
	cl := diskTestClient(t, c, "host-a")
	cfg := testAccDiskConfig(c, `
resource "kvm_disk" "data" {
  name     = "gone"
  host     = "host-a"
  size_mib = 16
}`)
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{Config: cfg},
			{
				PreConfig: func() {
					if err := cl.DeleteVolume(context.Background(), "default", "gone"); err != nil {
						t.Fatal(err)
					}
				},
				Config: cfg,
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_disk.data", plancheck.ResourceActionCreate),
				}},
				Check: testAccCheckDiskExists(cl, "default", "gone"),
			},
		},
	})
}

// An image is fetched by the host; a wrong checksum fails the create and
// the half-made volume is replaced on the next apply, not orphaned.
func TestAccDisk_sourceURL(t *testing.T) {
	image := []byte(strings.Repeat("kvm-image-", 300_000)) // ~2.9 MiB
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(image)
	}))
	defer srv.Close()
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}})
	cl := diskTestClient(t, c, "host-a")
	sum := fmt.Sprintf("sha256:%x", sha256.Sum256(image))
	bad := "sha256:" + strings.Repeat("0", 64)
	// A signed URL's query: a credential the host must not return.
	sig := "s3cr3t"
	cfgSigned := func(checksum, sig string) string {
		return testAccDiskConfig(c, fmt.Sprintf(`
resource "kvm_disk" "image" {
  name            = "image"
  host            = "host-a"
  source_url      = %q
  source_checksum = %q
}`, srv.URL+"/disk.qcow2?X-Signature="+sig, checksum))
	}
	cfg := func(checksum string) string { return cfgSigned(checksum, sig) }
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config:      cfg(bad),
				ExpectError: regexp.MustCompile(`(?s)Unable to Create Disk.*checksum mismatch`),
			},
			{
				Config: cfg(sum),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_disk.image", tfjsonpath.New("source_checksum"), knownvalue.StringExact(sum)),
					statecheck.ExpectKnownValue("kvm_disk.image", tfjsonpath.New("allocated_mib"), knownvalue.Int64Exact(3)),
					statecheck.ExpectKnownValue("kvm_disk.image", tfjsonpath.New("size_mib"), positiveInt()),
				},
				Check: func(*terraform.State) error {
					vols, err := cl.ListVolumes(context.Background(), "default")
					if err != nil {
						return err
					}
					if len(vols) != 1 {
						return fmt.Errorf("pool holds %d volumes, want exactly 1", len(vols))
					}
					return nil
				},
			},
			{
				ResourceName:      "kvm_disk.image",
				ImportState:       true,
				ImportStateId:     "host-a/default/image",
				ImportStateVerify: true,
				// The host never returns the URL's query (a signature).
				ImportStateVerifyIgnore: []string{"timeouts", "source_url"},
				ImportStateCheck: func(s []*terraform.InstanceState) error {
					if got, want := s[0].Attributes["source_url"], srv.URL+"/disk.qcow2"; got != want {
						return fmt.Errorf("imported source_url %q, want %q", got, want)
					}
					return nil
				},
			},
			// A re-signed URL of the same image is no new disk: no replace.
			{
				Config: cfgSigned(sum, "r0tated"),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_disk.image", plancheck.ResourceActionUpdate),
				}},
				Check: func(*terraform.State) error {
					v, err := cl.GetVolume(context.Background(), "default", "image")
					if err != nil {
						return err
					}
					if strings.Contains(v.SourceURL, "X-Signature") || v.SourceURL != srv.URL+"/disk.qcow2" {
						return fmt.Errorf("the host returned source_url %q; want it without its query", v.SourceURL)
					}
					return nil
				},
			},
		},
	})
}

// hclString quotes s for HCL, escaping what HCL and its templates treat
// specially (Go's %q uses \x escapes, which HCL does not know).
func hclString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04x`, r)
		case (r == '$' || r == '%') && i+1 < len(s) && s[i+1] == '{':
			b.WriteRune(r)
			b.WriteRune(r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// Hostile names fail at plan time, before anything reaches a host.
func TestAccDisk_hostileNames(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}})
	cl := diskTestClient(t, c, "host-a")
	names := []string{
		"../x</name>",
		"a\x00b",
		strings.Repeat("a", 300),
		"a/b",
		"-leading-dash",
		"new\nline",
		"white space",
		"..",
		"${x}",
		"",
	}
	var steps []resource.TestStep
	for _, n := range names {
		steps = append(steps, resource.TestStep{
			Config: testAccDiskConfig(c, fmt.Sprintf(`
resource "kvm_disk" "bad" {
  name     = %s
  host     = "host-a"
  size_mib = 8
}`, hclString(n))),
			PlanOnly:    true,
			ExpectError: regexp.MustCompile(`(?i)(invalid|must not be empty|characters long)`),
		})
	}
	steps = append(steps,
		resource.TestStep{
			Config: testAccDiskConfig(c, `
resource "kvm_disk" "bad" {
  name     = "ok"
  host     = "host-a"
  pool     = "../etc"
  size_mib = 8
}`),
			PlanOnly:    true,
			ExpectError: regexp.MustCompile(`pool name`),
		},
		resource.TestStep{
			Config: testAccDiskConfig(c, `
resource "kvm_disk" "bad" {
  name     = "ok"
  host     = "host-z"
  size_mib = 8
}`),
			PlanOnly:    true,
			ExpectError: regexp.MustCompile(`(?s)Unknown Host.*host "host-z" is not configured`),
		},
		resource.TestStep{
			Config: testAccDiskConfig(c, `
resource "kvm_disk" "bad" {
  name       = "ok"
  host       = "host-a"
  source_url = "file:///etc/shadow"
}`),
			PlanOnly:    true,
			ExpectError: regexp.MustCompile(`http:// or https://`),
		},
		resource.TestStep{
			Config: testAccDiskConfig(c, `
resource "kvm_disk" "bad" {
  name = "ok"
  host = "host-a"
}`),
			PlanOnly:    true,
			ExpectError: regexp.MustCompile(`size_mib is required for an empty disk`),
		},
		resource.TestStep{
			Config: testAccDiskConfig(c, `
resource "kvm_disk" "bad" {
  name         = "ok"
  host         = "host-a"
  base_disk_id = "host-a/default"
}`),
			PlanOnly:    true,
			ExpectError: regexp.MustCompile(`<host>/<pool>/<name>`),
		},
	)
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps:                    steps,
	})
	vols, err := cl.ListVolumes(context.Background(), "default")
	if err != nil {
		t.Fatal(err)
	}
	if len(vols) != 0 {
		t.Fatalf("hostile names reached the host: %+v", vols)
	}
}

// Growing a disk on real libvirt/QEMU (qemu-img resize under the pool).
func TestAccDisk_growReal(t *testing.T) {
	c := startHosts(t, harness.RealOptions(t, harness.Options{Hosts: []string{"host-a"}}))
	cl := diskTestClient(t, c, "host-a")
	// Hosts on one libvirtd share its pools: keep the name unique.
	name := fmt.Sprintf("grow-%d", os.Getpid())
	disk := func(size int) string {
		return testAccDiskConfig(c, fmt.Sprintf(`
resource "kvm_disk" "data" {
  name     = %q
  host     = "host-a"
  size_mib = %d
}`, name, size))
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{Config: disk(64)},
			{
				Config: disk(96),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_disk.data", plancheck.ResourceActionUpdate),
				}},
				Check: func(*terraform.State) error {
					v, err := cl.GetVolume(context.Background(), "default", name)
					if err != nil {
						return err
					}
					if v.SizeMiB != 96 {
						return fmt.Errorf("host reports %d MiB, want 96", v.SizeMiB)
					}
					return nil
				},
			},
		},
	})
}

// A host change never destroys the disk: without a way to copy it the
// apply fails and the disk stays where it is; a volume already on the new
// host (as after a VM migration that copied storage) is adopted in place.
func TestAccDisk_hostChange(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a", "host-b"}})
	clA, clB := diskTestClient(t, c, "host-a"), diskTestClient(t, c, "host-b")
	disk := func(host string) string {
		return testAccDiskConfig(c, fmt.Sprintf(`
resource "kvm_disk" "data" {
  name     = "moving"
  host     = %q
  size_mib = 32
}`, host))
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{Config: disk("host-a")},
			{
				// No VM attaches it: host-b copies it from host-a, which
				// then deletes its copy.
				Config: disk("host-b"),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_disk.data", plancheck.ResourceActionUpdate),
				}},
				Check: resource.ComposeTestCheckFunc(
					testAccCheckDiskExists(clB, "default", "moving"),
					testAccCheckDiskGone(clA, "default", "moving"),
				),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_disk.data", tfjsonpath.New("id"), knownvalue.StringExact("host-b/default/moving")),
				},
			},
			{
				// A volume of that name already on the target is adopted,
				// and the old copy kept (with a warning).
				PreConfig: func() {
					if _, err := clA.PutVolume(context.Background(), "default", "moving", api.VolumeSpec{SizeMiB: 32}); err != nil {
						t.Fatal(err)
					}
				},
				Config: disk("host-a"),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_disk.data", plancheck.ResourceActionUpdate),
				}},
				Check: resource.ComposeTestCheckFunc(
					testAccCheckDiskExists(clA, "default", "moving"),
					testAccCheckDiskExists(clB, "default", "moving"),
				),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_disk.data", tfjsonpath.New("id"), knownvalue.StringExact("host-a/default/moving")),
				},
			},
			{
				// A target volume of another format is refused; nothing changes.
				PreConfig: func() {
					if err := clB.DeleteVolume(context.Background(), "default", "moving"); err != nil {
						t.Fatal(err)
					}
					if _, err := clB.PutVolume(context.Background(), "default", "moving", api.VolumeSpec{SizeMiB: 32, Format: api.FormatRaw}); err != nil {
						t.Fatal(err)
					}
				},
				Config:      disk("host-b"),
				ExpectError: regexp.MustCompile(`(?s)Unable to Move Disk.*of\s+format\s+raw\s+instead\s+of\s+qcow2`),
			},
			{
				Config:   disk("host-a"),
				PlanOnly: true,
				Check:    testAccCheckDiskExists(clA, "default", "moving"),
			},
		},
	})
}
