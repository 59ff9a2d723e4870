package realstack

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSweepTestLeftovers puts on the system libvirt what a crashed test run
// leaves (an autostart pool under the tests' root, a volume in it, a domain
// using it) next to a pool outside the root, and checks that two users of the
// store keep it, that the last one's release removes exactly the tests'
// objects, and that the pool outside survives.
func TestSweepTestLeftovers(t *testing.T) {
	requireRealStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	d, err := EnsureLibvirt(ctx, LibvirtOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Stop() })
	uri := d.URI

	tag := fmt.Sprintf("sweeptest-%d", os.Getpid())
	run := shortTempDir(t)
	st := testStore{root: "/var/lib/kvm-" + tag, lockFile: filepath.Join(run, "lock"), usersFile: filepath.Join(run, "users")}
	keepDir := "/var/lib/kvm-" + tag + "-keep"
	virshT := func(args ...string) string {
		t.Helper()
		out, err := virsh(ctx, uri, args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	pool, keep, dom := tag, tag+"-keep", tag
	t.Cleanup(func() {
		for _, p := range []string{pool, keep} {
			_, _ = virsh(context.Background(), uri, "pool-destroy", p)
			_, _ = virsh(context.Background(), uri, "pool-undefine", p)
		}
		_, _ = virsh(context.Background(), uri, "undefine", dom)
		_ = os.RemoveAll(st.root)
		_ = os.RemoveAll(keepDir)
	})
	for _, p := range []struct{ name, dir string }{{pool, filepath.Join(st.root, "pool")}, {keep, keepDir}} {
		virshT("pool-define-as", p.name, "dir", "--target", p.dir)
		virshT("pool-build", p.name)
		virshT("pool-start", p.name)
		virshT("pool-autostart", p.name)
	}
	virshT("vol-create-as", pool, "v1", "1M", "--format", "qcow2")
	virshT("vol-create-as", keep, "v1", "1M", "--format", "qcow2")
	xmlFile := filepath.Join(run, "dom.xml")
	domXML := `<domain type='qemu'><name>` + dom + `</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64'>hvm</type></os>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='` + filepath.Join(st.root, "pool", "v1") + `'/><target dev='vda' bus='virtio'/></disk></devices></domain>`
	if err := os.WriteFile(xmlFile, []byte(domXML), 0o644); err != nil {
		t.Fatal(err)
	}
	virshT("define", xmlFile)

	left, err := st.leftovers(ctx, uri)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"domain " + dom, "pool " + pool + " (" + filepath.Join(st.root, "pool") + ")", "volume " + pool + "/v1", "file " + filepath.Join(st.root, "pool", "v1")}
	if got := fmt.Sprint(left); got != fmt.Sprint(want) {
		t.Fatalf("leftovers:\n got %s\nwant %s", got, want)
	}

	if err := st.disableAutostart(ctx, uri); err != nil {
		t.Fatal(err)
	}
	if info := virshT("pool-info", pool); !strings.Contains(info, "Autostart:      no") {
		t.Errorf("test pool still autostarts:\n%s", info)
	}
	if info := virshT("pool-info", keep); !strings.Contains(info, "Autostart:      yes") {
		t.Errorf("autostart of a pool outside the tests' root was changed:\n%s", info)
	}

	rel1, err := st.use(ctx, uri)
	if err != nil {
		t.Fatal(err)
	}
	rel2, err := st.use(ctx, uri)
	if err != nil {
		t.Fatal(err)
	}
	if _, inUse, err := st.sweepUnused(ctx, uri); err != nil || !inUse {
		t.Fatalf("sweep with users: inUse %v, err %v; want it refused", inUse, err)
	}
	if err := rel1(); err != nil {
		t.Fatal(err)
	}
	if left, _ := st.leftovers(ctx, uri); len(left) != len(want) {
		t.Fatalf("released while another user holds the store; left: %v", left)
	}
	if err := rel2(); err != nil {
		t.Fatal(err)
	}
	if left, err := st.leftovers(ctx, uri); err != nil || len(left) != 0 {
		t.Fatalf("after the last release: %v %v, want nothing", left, err)
	}
	if _, err := virsh(ctx, uri, "dominfo", dom); err == nil {
		t.Errorf("domain %s survived", dom)
	}
	if _, err := virsh(ctx, uri, "pool-info", pool); err == nil {
		t.Errorf("pool %s survived", pool)
	}
	// Outside the root: untouched.
	if out, err := exec.CommandContext(ctx, "virsh", "-c", uri, "vol-list", keep).CombinedOutput(); err != nil || !strings.Contains(string(out), "v1") {
		t.Errorf("pool %s outside the tests' root was touched: %v %s", keep, err, out)
	}
}
