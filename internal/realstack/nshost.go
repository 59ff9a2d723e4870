package realstack

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Defaults for NewHostNamespaces. The bridge, namespaces and state root are fixed
// names so that a later run (or scripts/realstack-down.sh) can find and remove what
// a crashed run left behind.
const (
	DefaultHostBridge    = "kvmtbr0"
	DefaultHostSubnet    = "10.77.0" // hosts get .1, .2, ...; the bridge gets .254
	DefaultHostStateRoot = "/var/tmp/kvm-realstack/hosts"
	hostNetnsPrefix      = "kvmt-"
	hostsLockFile        = "/run/kvm-realstack-hosts.lock"
	ovsRunDir            = "/run/openvswitch" // ovs-vsctl's default
)

// libvirtDirs are the directories each host gets a private copy of, bind-mounted
// over the system paths inside the host's mount namespace. Key: state subdirectory.
var libvirtDirs = []struct{ sub, path string }{
	{"etc", "/etc/libvirt"},
	{"run", "/run/libvirt"},
	{"lib", "/var/lib/libvirt"},
	{"cache", "/var/cache/libvirt"},
	{"log", "/var/log/libvirt"},
}

// hostNameRE bounds names so "kvmt-<name>" and the veth "kvmv-<name>" stay within
// the 15-byte interface/netns name limit and need no quoting in shell snippets.
var hostNameRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,9}$`)

// HostsOptions configures NewHostNamespaces.
type HostsOptions struct {
	// Names of the hosts, e.g. {"a", "b"}: lower-case letters and digits, at most 10.
	Names []string
	// OVS also starts a private Open vSwitch inside each host's network namespace.
	OVS bool
	// Bridge, Subnet and StateRoot default to DefaultHostBridge, DefaultHostSubnet and
	// DefaultHostStateRoot.
	Bridge, Subnet, StateRoot string
	// StartTimeout bounds the wait for every libvirtd to answer. Default 90 s.
	StartTimeout time.Duration
}

// NSHosts is a set of independent libvirt "hosts" on this machine, each in its own
// network and mount namespace, joined by a Linux bridge in the root namespace — enough
// for live migration and VXLAN overlays between hosts. Only one set exists per machine
// at a time: NewHostNamespaces holds a lock until Close, so concurrent test processes
// queue instead of fighting over the bridge and addresses.
type NSHosts struct {
	Hosts []*NSHost
	// Bridge is the root-namespace bridge; its address is Subnet.254.
	Bridge string

	opts HostsOptions
	lock *os.File
}

// NSHost is one host of an NSHosts set.
type NSHost struct {
	Name  string
	Netns string // network namespace, "kvmt-<name>"
	IP    string
	// URI reaches this host's libvirtd over TCP from any namespace.
	URI string
	// LocalURI reaches it over its UNIX socket from the root namespace.
	LocalURI string
	// StateDir holds the host's private etc/run/lib/cache/log (and ovs/) trees.
	StateDir string
	// OVS is the host's private Open vSwitch, nil unless HostsOptions.OVS.
	OVS *OVS

	libvirtdPID int
}

// Host returns the host called name, or nil.
func (hs *NSHosts) Host(name string) *NSHost {
	for _, h := range hs.Hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// NewHostNamespaces creates the bridge and the hosts and waits until every libvirtd
// answers on its TCP URI. On error everything created so far is removed.
func NewHostNamespaces(ctx context.Context, opts HostsOptions) (hs *NSHosts, err error) {
	if opts.Bridge == "" {
		opts.Bridge = DefaultHostBridge
	}
	if opts.Subnet == "" {
		opts.Subnet = DefaultHostSubnet
	}
	if opts.StateRoot == "" {
		opts.StateRoot = DefaultHostStateRoot
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = defaultStartWait
	}
	if len(opts.Names) == 0 || len(opts.Names) > 253 {
		return nil, fmt.Errorf("realstack: need 1..253 host names, got %d", len(opts.Names))
	}
	seen := map[string]bool{}
	for _, n := range opts.Names {
		if !hostNameRE.MatchString(n) || seen[n] {
			return nil, fmt.Errorf("realstack: invalid or duplicate host name %q (want %s)", n, hostNameRE)
		}
		seen[n] = true
	}

	lock, err := os.OpenFile(hostsLockFile, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("realstack: %w", err)
	}
	if err := flock(ctx, lock, syscall.LOCK_EX); err != nil {
		lock.Close()
		return nil, err
	}
	hs = &NSHosts{Bridge: opts.Bridge, opts: opts, lock: lock}
	defer func() {
		if err != nil {
			_ = hs.Close()
		}
	}()

	// Holding the lock means no live run owns these: anything left is from a crash.
	if err := CleanupHostNamespaces(opts.StateRoot, opts.Bridge); err != nil {
		return hs, err
	}
	if err := os.MkdirAll(opts.StateRoot, 0o755); err != nil {
		return hs, fmt.Errorf("realstack: %w", err)
	}
	// QEMU runs as libvirt-qemu and must traverse every parent of its files.
	if err := chmodParents(opts.StateRoot); err != nil {
		return hs, err
	}

	for _, args := range [][]string{
		{"link", "add", opts.Bridge, "type", "bridge"},
		{"addr", "add", opts.Subnet + ".254/24", "dev", opts.Bridge},
		{"link", "set", opts.Bridge, "up"},
	} {
		if _, err := run(ctx, "ip", args...); err != nil {
			return hs, fmt.Errorf("realstack: bridge: %w", err)
		}
	}

	for i, name := range opts.Names {
		h := &NSHost{
			Name:     name,
			Netns:    hostNetnsPrefix + name,
			IP:       fmt.Sprintf("%s.%d", opts.Subnet, i+1),
			StateDir: filepath.Join(opts.StateRoot, name),
		}
		h.URI = "qemu+tcp://" + h.IP + "/system"
		h.LocalURI = "qemu:///system?socket=" + filepath.Join(h.StateDir, "run", "libvirt-sock")
		hs.Hosts = append(hs.Hosts, h)
		if err := h.setUp(ctx, opts); err != nil {
			return hs, fmt.Errorf("realstack: host %s: %w", name, err)
		}
	}

	wctx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()
	for _, h := range hs.Hosts {
		err := pollUntil(wctx, 200*time.Millisecond, func(ctx context.Context) error {
			return libvirtAnswers(ctx, h.URI)
		})
		if err != nil {
			return hs, fmt.Errorf("realstack: host %s: libvirtd not answering on %s (log: %s): %w",
				h.Name, h.URI, filepath.Join(h.StateDir, "log", "libvirtd.log"), err)
		}
	}

	if opts.OVS {
		for _, h := range hs.Hosts {
			h.OVS, err = startOVS(ctx, filepath.Join(h.StateDir, "ovs"), h.CommandContext)
			if err != nil {
				return hs, fmt.Errorf("realstack: host %s: %w", h.Name, err)
			}
			// libvirtd plugs a VM's <virtualport type='openvswitch'/> NIC with
			// a plain ovs-vsctl, i.e. into the OVS on the default socket
			// (/run/openvswitch/db.sock): inside the host that must be the
			// host's own OVS, not the machine's.
			if err := os.MkdirAll(ovsRunDir, 0o755); err != nil {
				return hs, fmt.Errorf("realstack: %w", err)
			}
			if out, err := h.CommandContext(ctx, "mount", "--bind", h.OVS.Dir, ovsRunDir).CombinedOutput(); err != nil {
				return hs, fmt.Errorf("realstack: host %s: mount its OVS at %s: %v: %s", h.Name, ovsRunDir, err, out)
			}
		}
	}
	return hs, nil
}

func (h *NSHost) setUp(ctx context.Context, opts HostsOptions) error {
	veth := "kvmv-" + h.Name
	for _, args := range [][]string{
		{"netns", "add", h.Netns},
		{"link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", h.Netns},
		{"link", "set", veth, "master", opts.Bridge, "up"},
		{"-n", h.Netns, "link", "set", "lo", "up"},
		{"-n", h.Netns, "addr", "add", h.IP + "/24", "dev", "eth0"},
		{"-n", h.Netns, "link", "set", "eth0", "up"},
		{"-n", h.Netns, "route", "add", "default", "via", opts.Subnet + ".254"},
	} {
		if _, err := run(ctx, "ip", args...); err != nil {
			return err
		}
	}

	if err := h.seedState(ctx); err != nil {
		return err
	}

	// The daemons outlive this shell and keep its mount namespace (and so the bind
	// mounts) alive; the namespace vanishes with its last process at teardown.
	var script strings.Builder
	for _, d := range libvirtDirs {
		// Mount points too: /run/libvirt exists only once a libvirtd has
		// run on the machine, which on a fresh one nothing did yet.
		if err := os.MkdirAll(d.path, 0o755); err != nil {
			return fmt.Errorf("realstack: %w", err)
		}
		fmt.Fprintf(&script, "mount --bind %s %s && ", filepath.Join(h.StateDir, d.sub), d.path)
	}
	// A /dev/kvm that root can open but libvirt-qemu cannot (root:root 0600, as on
	// these machines) makes libvirt re-probe QEMU on every call — its cache records
	// KVM at probe time, then finds KVM unusable for the QEMU user — costing ~4-8 s
	// per domain start. Inside the host, hide it behind an inaccessible file: QEMU
	// uses TCG, consistently.
	fmt.Fprintf(&script, "if [ -e /dev/kvm ] && ! runuser -u libvirt-qemu -- test -r /dev/kvm -a -w /dev/kvm; "+
		"then mount --bind %s /dev/kvm; fi && ", filepath.Join(h.StateDir, "nokvm"))
	// PID files must live in the private /run/libvirt: the defaults collide between hosts.
	script.WriteString("virtlogd -d -p /run/libvirt/virtlogd.pid && " +
		"libvirtd -d --listen -p /run/libvirt/libvirtd.pid -f /etc/libvirt/libvirtd.conf")
	if _, err := run(ctx, "ip", "netns", "exec", h.Netns,
		"unshare", "--mount", "--propagation", "private", "sh", "-c", script.String()); err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	pid, err := readPIDFile(pctx, filepath.Join(h.StateDir, "run", "libvirtd.pid"))
	if err != nil {
		return err
	}
	h.libvirtdPID = pid
	return nil
}

// seedState copies the package defaults (cp -a keeps libvirt-qemu ownership of
// lib/qemu, and the capability cache keeps QEMU probing fast), then removes anything
// the system libvirt defined — autostart networks, domains, storage pools of other
// tests — so a host starts empty. Images are not copied.
func (h *NSHost) seedState(ctx context.Context) error {
	if err := os.MkdirAll(h.StateDir, 0o755); err != nil {
		return err
	}
	for _, d := range libvirtDirs {
		dst := filepath.Join(h.StateDir, d.sub)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		switch d.sub {
		case "run":
			continue // runtime state of the system daemon: start empty
		case "log":
			if err := os.MkdirAll(filepath.Join(dst, "qemu"), 0o755); err != nil {
				return err
			}
			continue
		}
		entries, err := os.ReadDir(d.path)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if d.sub == "lib" && e.Name() == "images" {
				continue
			}
			if _, err := run(ctx, "cp", "-a", filepath.Join(d.path, e.Name()), dst+"/"); err != nil {
				return err
			}
		}
	}
	if err := os.MkdirAll(filepath.Join(h.StateDir, "lib", "images"), 0o711); err != nil {
		return err
	}
	// Stand-in for /dev/kvm inside the host (see setUp): exists, but nobody may open it.
	if err := os.WriteFile(filepath.Join(h.StateDir, "nokvm"), nil, 0o000); err != nil {
		return err
	}
	for _, pattern := range []string{
		"etc/qemu/*.xml", "etc/qemu/autostart/*", "etc/qemu/networks/*.xml",
		"etc/qemu/networks/autostart/*", "etc/storage/*.xml", "etc/storage/autostart/*",
	} {
		matches, _ := filepath.Glob(filepath.Join(h.StateDir, pattern))
		for _, m := range matches {
			if err := os.Remove(m); err != nil {
				return err
			}
		}
	}

	uuid, err := randomUUID()
	if err != nil {
		return err
	}
	libvirtdConf := fmt.Sprintf(`# realstack host %s
listen_tls = 0
listen_tcp = 1
listen_addr = %q
auth_tcp = "none"
auth_unix_rw = "none"
# Distinct per host, else migration fails with "Attempt to migrate guest to the same host".
host_uuid = %q
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
`, h.Name, h.IP, uuid)
	// migration_host: without it the destination advertises the machine's hostname,
	// which resolves to 127.0.0.1. No cgroup controllers: there is no systemd here.
	qemuConf := fmt.Sprintf(`# realstack host %s
migration_address = %q
migration_host = %q
cgroup_controllers = [ ]
# No per-domain /dev namespace: libvirt cannot replicate the /dev/kvm mask into it
# ("Unable to move ... mount to /dev/kvm").
namespaces = [ ]
`, h.Name, h.IP, h.IP)
	if err := os.WriteFile(filepath.Join(h.StateDir, "etc", "libvirtd.conf"), []byte(libvirtdConf), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(h.StateDir, "etc", "qemu.conf"), []byte(qemuConf), 0o644)
}

// Command returns a command that runs "on" the host: in its network and mount
// namespaces, so it sees the host's own /var/lib/libvirt, /run/libvirt and address.
// This is how a per-host agent (kvm-hostd) is started.
func (h *NSHost) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", h.nsenterArgs(name, args)...)
}

// CommandContext is Command bound to ctx.
func (h *NSHost) CommandContext(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", h.nsenterArgs(name, args)...)
}

func (h *NSHost) nsenterArgs(name string, args []string) []string {
	return append([]string{"-t", strconv.Itoa(h.libvirtdPID), "-m", "-n", "--", name}, args...)
}

// Close stops every daemon and QEMU of every host (by the PIDs in their private run
// dirs), then removes the namespaces, the bridge and the state. Safe to call twice.
func (hs *NSHosts) Close() error {
	if hs == nil || hs.lock == nil {
		return nil
	}
	err := CleanupHostNamespaces(hs.opts.StateRoot, hs.opts.Bridge)
	hs.lock.Close()
	hs.lock = nil
	return err
}

// CleanupHostNamespaces removes what NewHostNamespaces created under stateRoot: it
// stops the processes named in each host's PID files (all at once: libvirtd takes ~2 s
// to exit), deletes the host namespaces and the bridge, and removes the state. It
// touches nothing it has no record of. Used by Close, at start-up after a crash, and
// by scripts/realstack-down.sh.
func CleanupHostNamespaces(stateRoot, bridge string) error {
	hosts, err := os.ReadDir(stateRoot)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("realstack: %w", err)
	}
	var ds []daemon
	for _, e := range hosts {
		if e.IsDir() {
			ds = append(ds, hostDaemons(filepath.Join(stateRoot, e.Name()))...)
		}
	}
	var errs []error
	if err := stopDaemons(DefaultStopTimeout, ds...); err != nil {
		errs = append(errs, err)
	}
	for _, e := range hosts {
		if !e.IsDir() || !hostNameRE.MatchString(e.Name()) {
			continue
		}
		ns := hostNetnsPrefix + e.Name()
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			if _, err := run(context.Background(), "ip", "netns", "del", ns); err != nil {
				errs = append(errs, err)
			}
		}
		// A host whose namespace is already gone may have left its veth's root end.
		_ = exec.Command("ip", "link", "del", "kvmv-"+e.Name()).Run()
	}
	if _, err := os.Stat(filepath.Join("/sys/class/net", bridge)); err == nil {
		if _, err := run(context.Background(), "ip", "link", "del", bridge); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		// Bind mounts die with their namespace's last process, so this only deletes
		// our copies, never the system's /etc/libvirt.
		for _, e := range hosts {
			if err := os.RemoveAll(filepath.Join(stateRoot, e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// hostDaemons lists the live processes recorded in a host's state dir.
func hostDaemons(dir string) []daemon {
	pidFiles := map[string]string{
		filepath.Join(dir, "run", "libvirtd.pid"):     "libvirtd",
		filepath.Join(dir, "run", "virtlogd.pid"):     "virtlogd",
		filepath.Join(dir, "ovs", "ovs-vswitchd.pid"): "ovs-vswitchd",
		filepath.Join(dir, "ovs", "ovsdb-server.pid"): "ovsdb-server",
	}
	// QEMU's comm is truncated to 15 bytes: "qemu-system-x86".
	qemus, _ := filepath.Glob(filepath.Join(dir, "run", "qemu", "*.pid"))
	for _, q := range qemus {
		pidFiles[q] = "qemu-system-x86"
	}
	// A VM's emulated TPM: swtpm exits with its QEMU, but not if that never
	// connected to it (a start that failed half-way).
	swtpms, _ := filepath.Glob(filepath.Join(dir, "run", "qemu", "swtpm", "*-swtpm.pid"))
	for _, p := range swtpms {
		pidFiles[p] = "swtpm"
	}
	var ds []daemon
	for f, name := range pidFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			if d := (daemon{name: name, pid: pid}); d.alive() {
				ds = append(ds, d)
			}
		}
	}
	return ds
}

// chmodParents makes dir and its parents traversable by libvirt-qemu, stopping at
// directories that already are (e.g. /var/tmp is 1777).
func chmodParents(dir string) error {
	for d := dir; d != "/" && d != "."; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o005 != 0o005 {
			if err := os.Chmod(d, fi.Mode().Perm()|0o055); err != nil {
				return err
			}
		}
	}
	return nil
}

func randomUUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}

// StartHostNamespaces is NewHostNamespaces for a test: it fails the test
// when the hosts cannot start and closes them when the test ends.
func StartHostNamespaces(ctx context.Context, t testing.TB, opts HostsOptions) *NSHosts {
	t.Helper()
	hs, err := NewHostNamespaces(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := hs.Close(); err != nil {
			t.Errorf("closing namespace hosts: %v", err)
		}
	})
	return hs
}
