package realstack

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// TestCephReal starts the one-node Ceph on a namespace host's underlay and
// checks what the rbd tests build on: a host's libvirt reaches it through
// an rbd pool with a cephx secret, and a volume created from another in
// that pool is an RBD layered clone (a child of a snapshot of its origin),
// not a copy.
func TestCephReal(t *testing.T) {
	Require(t, "libvirtd", "virtlogd", "virsh", "nsenter", "ip", "ceph-mon", "ceph-osd", "ceph-mgr", "rbd")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	hs := StartHostNamespaces(ctx, t, HostsOptions{Names: []string{"a"}})
	h := hs.Host("a")
	c := StartCephForTest(ctx, t, CephOptions{Addr: DefaultHostSubnet + ".254"})
	if err := h.DefineRBDPool(ctx, c, "kvmrbd", "5f0f1d6e-7d0c-4e4b-9d3b-6a1c2e0f0a01"); err != nil {
		t.Fatal(err)
	}
	virsh := func(args ...string) string {
		t.Helper()
		out, err := run(ctx, "virsh", append([]string{"-c", h.LocalURI}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	dir := shortTempDir(t)
	write := func(name, s string) string {
		p := dir + "/" + name
		if err := writeFile(p, s); err != nil {
			t.Fatal(err)
		}
		return p
	}
	virsh("vol-create", "kvmrbd", write("base.xml", `<volume><name>base</name><capacity unit='bytes'>4294967296</capacity><target><format type='raw'/></target></volume>`))
	t0 := time.Now()
	virsh("vol-create-from", "kvmrbd", write("clone.xml", `<volume><name>clone</name><capacity unit='bytes'>4294967296</capacity><target><format type='raw'/></target></volume>`), "base", "--inputpool", "kvmrbd")
	t.Logf("clone of a 4 GiB rbd volume through libvirt: %s", time.Since(t0).Round(time.Millisecond))
	info, err := c.Tool(ctx, "rbd", "info", c.Pool+"/clone")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(info, "parent: "+c.Pool+"/base@") {
		t.Fatalf("the clone has no RBD parent:\n%s", info)
	}
	virsh("vol-delete", "--pool", "kvmrbd", "clone")
	virsh("vol-delete", "--pool", "kvmrbd", "base", "--delete-snapshots")
	if out, _ := c.Tool(ctx, "rbd", "ls", c.Pool); strings.TrimSpace(out) != "" {
		t.Fatalf("images left in the pool: %s", out)
	}
}

func writeFile(p, s string) error { return os.WriteFile(p, []byte(s), 0o600) }
