package kvm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/terraform"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// crashHost is one kvm-hostd that a test kills at a crash point and starts
// again. The provider finds it through KVM_HOSTS, because a restarted host
// listens on a new port.
type crashHost struct {
	c     *harness.Cluster
	h     *harness.Host
	token string
}

func (ch *crashHost) client(t *testing.T) *client.Client {
	t.Helper()
	cl, err := client.New(client.Options{Endpoint: ch.h.URL, Token: ch.token})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// restart waits for the host to have died at its crash point and starts it
// normally (no hook), as an operator or a supervisor would.
func (ch *crashHost) restart(t *testing.T, point string) {
	t.Helper()
	if !ch.h.Exited(30 * time.Second) {
		t.Fatalf("kvm-hostd did not die at crash point %s", point)
	}
	ch.h.SetEnv(nil)
	if err := ch.h.Start(); err != nil {
		t.Fatalf("restarting kvm-hostd after the crash at %s: %v", point, err)
	}
	t.Setenv("KVM_HOSTS", ch.c.KVMHosts())
}

// sweep fails when the host holds a domain, volume, network or switch port
// named with prefix that the state does not account for.
func (ch *crashHost) sweep(t *testing.T, s *terraform.State, prefix string) error {
	known := harness.NewKnown()
	for _, rs := range s.RootModule().Resources {
		if rs.Primary != nil {
			known.AddResource(rs.Type, func(a string) string { return rs.Primary.Attributes[a] })
		}
	}
	o, err := harness.FindOrphans(context.Background(), map[string]*client.Client{ch.h.Name: ch.client(t)}, "default", prefix, known)
	if err != nil {
		return err
	}
	if !o.Empty() {
		return fmt.Errorf("after the re-apply: %s", o)
	}
	return nil
}

// crashVMCreatePoints are the steps of a VM create kvm-hostd can die at.
var crashVMCreatePoints = []string{"vm.create", "vm.defined", "vm.started"}

// testCrashVMCreate kills kvm-hostd at each step of a VM create (a VM with
// a disk and a NIC): the apply fails; kvm-hostd is started again normally;
// the re-apply converges to an empty plan; and the sweep finds no orphan
// domain, volume or switch port.
func testCrashVMCreate(t *testing.T, real bool, tag string, points []string) {
	for _, point := range points {
		t.Run(point, func(t *testing.T) {
			testAccPreCheck(t)
			opts := harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs, Env: harness.CrashEnv(point)}
			if real {
				opts = harness.RealOptions(t, opts)
				opts.ExtraArgs = realHostArgs
				if os.Getenv("KVM_TEST_OVSDB") == "" {
					t.Skip("real-stack crash test: set KVM_TEST_OVSDB (e.g. unix:/run/openvswitch/db.sock)")
				}
			}
			prefix := realPrefix(tag)
			c := startHosts(t, opts)
			ch := &crashHost{c: c, h: c.Host("host-a"), token: c.Token}
			t.Setenv("KVM_HOSTS", c.KVMHosts())
			// Runs before the host stops: whatever a failed run left.
			t.Cleanup(func() { realSweep(t, ch.client(t), prefix) })
			config := fmt.Sprintf(`
provider "kvm" {
  token = %[1]q
}
resource "kvm_network" "n" {
  name = "%[2]snet"
}
resource "kvm_disk" "d" {
  name     = "%[2]sdisk"
  host     = "host-a"
  size_mib = 16
}
resource "kvm_vm" "v" {
  name               = "%[2]svm"
  host               = "host-a"
  vcpu               = 1
  memory_mib         = 64
  shutdown_timeout   = 0
  disks              = [{ disk_id = kvm_disk.d.id }]
  network_interfaces = [{ network = kvm_network.n.name }]
}
`, c.Token, prefix)
			resource.Test(t, resource.TestCase{
				ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
				CheckDestroy:             func(s *terraform.State) error { return realCheckNothingLeft(ch.client(t), prefix)(s) },
				Steps: []resource.TestStep{
					{
						Config:      config,
						ExpectError: regexp.MustCompile(`(?i)kvm_vm|host-a`),
					},
					{
						PreConfig: func() { ch.restart(t, point) },
						Config:    config,
						Check:     func(s *terraform.State) error { return ch.sweep(t, s, prefix) },
					},
				},
			})
		})
	}
}

// On the embedded default a crash loses the test driver's state with the
// process (it lives in kvm-hostd): the re-apply re-creates everything, so
// one point (the response lost with the process) is enough here.
func TestAccFault_crashVMCreate(t *testing.T) {
	testCrashVMCreate(t, false, "kc", []string{"vm.started"})
}

// On the real stack libvirt and Open vSwitch keep what kvm-hostd did before
// it died, which is what a re-apply must converge from.
func TestAccReal_crashVMCreate(t *testing.T) {
	testCrashVMCreate(t, true, "kr", crashVMCreatePoints)
}

// The orphan sweep reports what no state holds: a domain, its volume, its
// network and its switch port made behind Terraform's back, and only the
// port and the domain once the state knows the rest.
func TestAccFault_sweepFindsOrphans(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs})
	cl := testAccVMClient(t, c, "host-a")
	ctx := context.Background()
	const p = "sw-"
	attrs := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	if _, err := cl.PutNetwork(ctx, p+"net", api.NetworkSpec{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.PutVolume(ctx, "default", p+"disk", api.VolumeSpec{SizeMiB: 16, Format: "qcow2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.PutVM(ctx, p+"vm", api.VMSpec{VCPU: 1, MemoryMiB: 64, Running: true,
		Disks:      []api.VMDisk{{Pool: "default", Volume: p + "disk"}},
		Interfaces: []api.VMInterface{{Network: p + "net"}},
	}); err != nil {
		t.Fatal(err)
	}
	hosts := map[string]*client.Client{"host-a": cl}
	known := harness.NewKnown()
	o, err := harness.FindOrphans(ctx, hosts, "default", p, known)
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Domains) != 1 || len(o.Volumes) != 1 || len(o.Networks) != 1 || len(o.Ports) != 1 {
		t.Errorf("with an empty state: %s; want 1 domain, volume, network and port set", o)
	}
	known.AddResource("kvm_network", func(string) string { return p + "net" })
	known.AddResource("kvm_disk", attrs(map[string]string{"host": "host-a", "name": p + "disk"}))
	if o, err = harness.FindOrphans(ctx, hosts, "default", p, known); err != nil {
		t.Fatal(err)
	}
	if len(o.Domains) != 1 || len(o.Volumes) != 0 || len(o.Networks) != 0 || len(o.Ports) != 1 {
		t.Errorf("with the network and disk in state: %s; want the domain and its port only", o)
	}
	known.AddResource("kvm_vm", attrs(map[string]string{"host": "host-a", "name": p + "vm"}))
	if o, err = harness.FindOrphans(ctx, hosts, "default", p, known); err != nil || !o.Empty() {
		t.Errorf("with everything in state: %s (%v)", o, err)
	}
}

// volumeContent reads a volume's content through the host's API.
func volumeContent(ctx context.Context, cl *client.Client, pool, name string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, cl.ContentURL(pool, name), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+cl.Token())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("GET %s: %s: %s", cl.ContentURL(pool, name), resp.Status, b)
	}
	return io.ReadAll(resp.Body)
}

// checkVolumeHolds fails unless the volume's content begins with image.
// libvirt's test driver has no data path: it records how many bytes were
// written and reads back zeros, so there only the length is compared.
func checkVolumeHolds(cl *client.Client, pool, name string, image []byte) error {
	ctx := context.Background()
	h, err := cl.Host(ctx)
	if err != nil {
		return err
	}
	got, err := volumeContent(ctx, cl, pool, name)
	if err != nil {
		return err
	}
	if strings.HasPrefix(h.LibvirtURI, "test:") {
		if len(got) != len(image) {
			return fmt.Errorf("volume %s/%s holds %d bytes, not the %d-byte image: a partial copy was reported complete", pool, name, len(got), len(image))
		}
		return nil
	}
	if len(got) < len(image) || !bytes.Equal(got[:len(image)], image) {
		return fmt.Errorf("volume %s/%s holds %d bytes (sha256 %x), not the %d-byte image (sha256 %x): a partial download was reported complete",
			pool, name, len(got), sha256.Sum256(got), len(image), sha256.Sum256(image))
	}
	return nil
}

// testImageServer serves image at /img.raw.
func testImageServer(t *testing.T, image []byte) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(len(image)))
		_, _ = w.Write(image)
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/img.raw"
}

// TestAccReal_crashDownload kills kvm-hostd while it downloads a disk's
// source_url: once the fetch has begun and nothing is written, and once the
// image is written but its checksum not yet verified. After a normal
// restart the re-apply converges, the volume holds the image (a half-done
// download is never reported complete), and the sweep finds no orphan.
// With a wrong checksum, the re-apply after a crash between write and
// verify must still fail: an unverified image is not complete.
func TestAccReal_crashDownload(t *testing.T) {
	image := bytes.Repeat([]byte("kvm-download-"), 250_000) // ~3.1 MiB
	good := fmt.Sprintf("sha256:%x", sha256.Sum256(image))
	bad := "sha256:" + strings.Repeat("0", 64)
	for _, tc := range []struct {
		name, point, checksum string
	}{
		{"download.started", "download.started", good},
		{"download.written", "download.written", good},
		{"download.written/bad-checksum", "download.written", bad},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testAccPreCheck(t)
			opts := harness.RealOptions(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: realHostArgs, Env: harness.CrashEnv(tc.point)})
			url := testImageServer(t, image)
			prefix := realPrefix("kd")
			c := startHosts(t, opts)
			ch := &crashHost{c: c, h: c.Host("host-a"), token: c.Token}
			t.Setenv("KVM_HOSTS", c.KVMHosts())
			t.Cleanup(func() { realSweep(t, ch.client(t), prefix) })
			config := fmt.Sprintf(`
provider "kvm" {
  token = %[1]q
}
resource "kvm_disk" "img" {
  name            = "%[2]simg"
  host            = "host-a"
  format          = "raw"
  source_url      = %[3]q
  source_checksum = %[4]q
}
`, c.Token, prefix, url, tc.checksum)
			reapply := resource.TestStep{
				PreConfig: func() { ch.restart(t, tc.point) },
				Config:    config,
				Check: func(s *terraform.State) error {
					if err := checkVolumeHolds(ch.client(t), "default", prefix+"img", image); err != nil {
						return err
					}
					return ch.sweep(t, s, prefix)
				},
			}
			if tc.checksum == bad {
				reapply.Check = nil
				reapply.ExpectError = regexp.MustCompile(`checksum mismatch`)
			}
			resource.Test(t, resource.TestCase{
				ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
				CheckDestroy:             func(s *terraform.State) error { return realCheckNothingLeft(ch.client(t), prefix)(s) },
				Steps: []resource.TestStep{
					{Config: config, ExpectError: regexp.MustCompile(`(?i)disk|host-a`)},
					reapply,
				},
			})
		})
	}
}

// TestAccFault_crashCopy kills the target kvm-hostd in the middle of a
// disk's host-to-host copy (a change of kvm_disk.host). After a normal
// restart the re-apply converges: the volume exists once, on the new host,
// with the image's bytes, and the sweep finds no orphan on either host.
// The embedded default is enough here: the source host keeps its volume
// (its own process), and the target's partial copy dies with the crash.
func TestAccFault_crashCopy(t *testing.T) {
	image := bytes.Repeat([]byte("kvm-copy-"), 350_000) // ~3 MiB
	url := testImageServer(t, image)
	c := startHosts(t, harness.Options{Hosts: []string{"host-a", "host-b"}})
	a, b := c.Host("host-a"), c.Host("host-b")
	clientOf := func(h *harness.Host) *client.Client {
		cl, err := client.New(client.Options{Endpoint: h.URL, Token: c.Token})
		if err != nil {
			t.Fatal(err)
		}
		return cl
	}
	t.Setenv("KVM_HOSTS", c.KVMHosts())
	const name = "kcp-img"
	cfg := func(host string) string {
		return fmt.Sprintf(`
provider "kvm" {
  token = %q
}
resource "kvm_disk" "img" {
  name       = %q
  host       = %q
  format     = "raw"
  source_url = %q
}
`, c.Token, name, host, url)
	}
	restartB := func(env []string) {
		_ = b.Stop()
		b.SetEnv(env)
		if err := b.Start(); err != nil {
			t.Fatal(err)
		}
		t.Setenv("KVM_HOSTS", c.KVMHosts())
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config: cfg("host-a"),
				Check:  func(*terraform.State) error { return checkVolumeHolds(clientOf(a), "default", name, image) },
			},
			{
				PreConfig:   func() { restartB(harness.CrashEnv("copy.streaming")) },
				Config:      cfg("host-b"),
				ExpectError: regexp.MustCompile(`(?i)host-b`),
			},
			{
				PreConfig: func() {
					if !b.Exited(30 * time.Second) {
						t.Fatal("host-b did not die at crash point copy.streaming")
					}
					restartB(nil)
				},
				Config: cfg("host-b"),
				Check: func(s *terraform.State) error {
					if err := checkVolumeHolds(clientOf(b), "default", name, image); err != nil {
						return err
					}
					known := harness.NewKnown()
					for _, rs := range s.RootModule().Resources {
						known.AddResource(rs.Type, func(k string) string { return rs.Primary.Attributes[k] })
					}
					o, err := harness.FindOrphans(context.Background(), map[string]*client.Client{"host-a": clientOf(a), "host-b": clientOf(b)}, "default", "kcp-", known)
					if err != nil {
						return err
					}
					if !o.Empty() {
						return fmt.Errorf("after the re-apply: %s", o)
					}
					return nil
				},
			},
		},
	})
}
