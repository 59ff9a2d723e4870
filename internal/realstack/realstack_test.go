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

// requireRealStack stops the test unless the real-stack tests were asked for (see
// Require): they need root, the packages from scripts/install-deps.sh, and start
// real daemons.
func requireRealStack(t *testing.T) {
	t.Helper()
	Require(t, "libvirtd", "virtlogd", "virsh", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl")
}

// shortTempDir returns a temp dir short enough for AF_UNIX socket paths, which
// t.TempDir (named after the test) can exceed.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "rs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func TestEnsureLibvirt(t *testing.T) {
	requireRealStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	d, err := EnsureLibvirt(ctx, LibvirtOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Error(err)
		}
	})
	t.Logf("libvirt at %s (started here: %v)", d.URI, d.Started)

	// A second handle (as another test package would take) must see it up, not start
	// a second libvirtd.
	d2, err := EnsureLibvirt(ctx, LibvirtOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d2.Started {
		t.Error("second EnsureLibvirt started libvirtd again")
	}
	if err := d2.Stop(); err != nil {
		t.Fatal(err)
	}
	// d still holds a reference: the daemons must have survived d2.Stop.
	if out, err := exec.CommandContext(ctx, "virsh", "-c", d.URI, "list", "--all").CombinedOutput(); err != nil {
		t.Fatalf("libvirt gone after the other handle stopped: %v: %s", err, out)
	}
	if n := len(findProcesses("libvirtd")); n != 1 {
		t.Errorf("found %d libvirtd in this namespace, want 1", n)
	}
}

func TestEnsureOVS(t *testing.T) {
	requireRealStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Isolated: the stack's own instance may hold this namespace's userspace
	// datapath (see EnsureOVS).
	o, err := EnsureIsolatedOVS(ctx, shortTempDir(t))
	if err != nil {
		t.Fatal(err)
	}
	daemons := append([]daemon(nil), o.daemons...)
	t.Cleanup(func() { _ = o.Stop() })
	if !strings.HasPrefix(o.Endpoint, "unix:/") {
		t.Errorf("endpoint = %q", o.Endpoint)
	}

	// Bridge names are netdevs in this namespace: keep them unique and <= 15 bytes.
	br := fmt.Sprintf("rst%d", os.Getpid()%1000000)
	if err := o.AddNetdevBridge(br); err != nil {
		t.Fatal(err)
	}
	out, err := o.Vsctl("list-br")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(out) != br {
		t.Errorf("list-br = %q, want %q", out, br)
	}
	// A second instance realizes its own netdev bridge while the first holds
	// one: in one namespace the second would fail on the ovs-netdev device.
	o2, err := EnsureIsolatedOVS(ctx, shortTempDir(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = o2.Stop() })
	if err := o2.AddNetdevBridge(br); err != nil {
		t.Fatalf("second instance beside the first: %v", err)
	}
	ns2 := o2.netns
	if err := o2.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join("/run/netns", ns2)); !os.IsNotExist(err) {
		t.Errorf("namespace %s of the stopped instance is still there (%v)", ns2, err)
	}
	// The system OVS (if any) must not see the private bridge.
	if out, err := exec.Command("ovs-vsctl", "--timeout=2", "br-exists", br).CombinedOutput(); err == nil {
		t.Errorf("bridge %s leaked into the system OVS: %s", br, out)
	}
	if _, err := o.Vsctl("del-br", br); err != nil {
		t.Fatal(err)
	}

	if err := o.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, d := range daemons {
		if d.alive() {
			t.Errorf("%s still running after Stop", d)
		}
	}
}

func TestHostNamespaces(t *testing.T) {
	requireRealStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	start := time.Now()
	hs, err := NewHostNamespaces(ctx, HostsOptions{Names: []string{"a", "b"}, OVS: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		start := time.Now()
		if err := hs.Close(); err != nil {
			t.Error(err)
		}
		t.Logf("teardown took %s", time.Since(start).Round(time.Millisecond))
	})
	t.Logf("two hosts up in %s", time.Since(start).Round(time.Millisecond))

	a, b := hs.Host("a"), hs.Host("b")
	for _, h := range hs.Hosts {
		// From the root namespace over TCP, as another host's libvirtd would connect.
		if out, err := exec.CommandContext(ctx, "virsh", "-c", h.URI, "uri").CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", h.URI, err, out)
		}
		if out, err := exec.CommandContext(ctx, "virsh", "-c", h.LocalURI, "list", "--all").CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", h.LocalURI, err, out)
		}
		// "On" the host: its own address and its own libvirt config.
		out, err := h.Command("ip", "-4", "-o", "addr", "show", "dev", "eth0").CombinedOutput()
		if err != nil || !strings.Contains(string(out), h.IP+"/24") {
			t.Errorf("host %s: eth0 = %q, %v; want %s", h.Name, out, err, h.IP)
		}
		out, err = h.Command("grep", "-c", "realstack host "+h.Name, "/etc/libvirt/libvirtd.conf").CombinedOutput()
		if err != nil {
			t.Errorf("host %s does not see its private /etc/libvirt: %v: %s", h.Name, err, out)
		}
		if err := h.OVS.AddNetdevBridge("br-test"); err != nil {
			t.Errorf("host %s: %v", h.Name, err)
		}
		// A plain ovs-vsctl on the host (as libvirtd plugs a VM's NIC)
		// reaches the host's own OVS, which has the bridge.
		out, err = h.Command("ovs-vsctl", "--timeout=10", "br-exists", "br-test").CombinedOutput()
		if err != nil {
			t.Errorf("host %s: ovs-vsctl on the default socket does not see the host's bridge: %v: %s", h.Name, err, out)
		}
	}
	// Hosts reach each other across the bridge (as migration needs).
	if out, err := a.Command("virsh", "-c", b.URI, "uri").CombinedOutput(); err != nil {
		t.Errorf("a cannot reach b: %v: %s", err, out)
	}

	t.Run("live migration", func(t *testing.T) {
		testLiveMigration(ctx, t, a, b)
	})

	// Parallel tests each start their own set: a second one, with the same
	// host name, gets its own key, address and namespace on the shared bridge,
	// and closing it leaves the first set's bridge in place.
	t.Run("a second set beside it", func(t *testing.T) {
		hs2, err := NewHostNamespaces(ctx, HostsOptions{Names: []string{"a"}})
		if err != nil {
			t.Fatal(err)
		}
		a2 := hs2.Host("a")
		if a2.Key == a.Key || a2.IP == a.IP || a2.Netns == a.Netns || a2.Veth == a.Veth || a2.StateDir == a.StateDir {
			t.Errorf("second set's host a shares names with the first: %+v vs %+v", a2, a)
		}
		if out, err := a2.Command("virsh", "-c", b.URI, "uri").CombinedOutput(); err != nil {
			t.Errorf("second set cannot reach the first: %v: %s", err, out)
		}
		if err := hs2.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join("/run/netns", a2.Netns)); err == nil {
			t.Errorf("namespace %s left after its set closed", a2.Netns)
		}
		if _, err := os.Stat(filepath.Join("/sys/class/net", hs.Bridge)); err != nil {
			t.Errorf("bridge removed while a set still lives: %v", err)
		}
		if out, err := exec.CommandContext(ctx, "virsh", "-c", a.URI, "uri").CombinedOutput(); err != nil {
			t.Errorf("first set's host a stopped answering: %v: %s", err, out)
		}
	})
}

// testLiveMigration moves a running 64 MiB diskless domain from one host to the other
// with virsh, the way the recipe measured it.
func testLiveMigration(ctx context.Context, t *testing.T, src, dst *NSHost) {
	const name = "rs-migrate"
	xml := `<domain type='qemu'>
  <name>` + name + `</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>`
	xmlFile := filepath.Join(t.TempDir(), "domain.xml")
	if err := os.WriteFile(xmlFile, []byte(xml), 0o644); err != nil {
		t.Fatal(err)
	}
	virsh := func(uri string, args ...string) string {
		t.Helper()
		out, err := exec.CommandContext(ctx, "virsh", append([]string{"-c", uri}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("virsh -c %s %s: %v: %s", uri, strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	start := time.Now()
	virsh(src.URI, "define", xmlFile)
	virsh(src.URI, "start", name)
	t.Logf("define+start took %s", time.Since(start).Round(time.Millisecond))
	uuid := virsh(src.URI, "domuuid", name)

	start = time.Now()
	virsh(src.URI, "migrate", "--live", "--p2p", "--persistent", "--undefinesource", name, dst.URI)
	t.Logf("live migration took %s", time.Since(start).Round(time.Millisecond))

	if state := virsh(dst.URI, "domstate", name); state != "running" {
		t.Errorf("on destination: state %q, want running", state)
	}
	if got := virsh(dst.URI, "domuuid", name); got != uuid {
		t.Errorf("UUID changed across migration: %s -> %s", uuid, got)
	}
	if out, err := exec.CommandContext(ctx, "virsh", "-c", src.URI, "dominfo", name).CombinedOutput(); err == nil {
		t.Errorf("domain still defined on source: %s", out)
	}
	virsh(dst.URI, "destroy", name)
	virsh(dst.URI, "undefine", name)
}

func TestBridgeRealized(t *testing.T) {
	for _, c := range []struct {
		out        string
		port       int
		done, fail bool
	}{
		{out: "[]\n5\n", port: 5, done: true},
		{out: "[]\n[]\n"},                                   // vswitchd has not recorded it yet: wait
		{out: "[]\n-1\n", port: -1, done: true, fail: true}, // no datapath
		{out: "\"could not open network device rst1 (No such device)\"\n-1\n", done: true, fail: true},
		{out: ""},
	} {
		port, done, err := bridgeRealized(c.out)
		if port != c.port || done != c.done || (done && (err != nil) != c.fail) || (!done && err == nil) {
			t.Errorf("bridgeRealized(%q) = %d, %v, %v; want %d, done %v, failure %v", c.out, port, done, err, c.port, c.done, c.fail)
		}
	}
}
