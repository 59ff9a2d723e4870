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
	hostVethPrefix       = "kvmv-"
	// hostsLockFile guards the shared bridge and the allocation of host
	// keys; it is held only while a set is being set up or torn down.
	hostsLockFile = "/run/kvm-realstack-hosts.lock"
	// hostsActiveFile is held shared by every live set, so the set that
	// finds it free knows it is alone: leftovers are a crashed run's, and
	// the bridge is its to create or remove.
	hostsActiveFile = "/run/kvm-realstack-hosts.active"
	// maxHostKeys bounds live hosts: a key is a two-digit index.
	maxHostKeys = 99
	ovsRunDir   = "/run/openvswitch" // ovs-vsctl's default
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

// hostNameRE bounds names so "kvmt-<key>" and the veth "kvmv-<key>" (the key
// is a two-digit index and the name) stay within the 15-byte interface/netns
// name limit and need no quoting in shell snippets.
var hostNameRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,7}$`)

// hostKeyRE matches host keys, the names of their state directories.
var hostKeyRE = regexp.MustCompile(`^([0-9]{2})[a-z][a-z0-9]{0,7}$`)

// HostsOptions configures NewHostNamespaces.
type HostsOptions struct {
	// Names of the hosts, e.g. {"a", "b"}: lower-case letters and digits, at most 8.
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
// for live migration and VXLAN overlays between hosts. Several sets may live at once
// (tests running in parallel, in one process or several): they share the bridge and
// its subnet, and each host gets a key, an address and names no live host has.
type NSHosts struct {
	Hosts []*NSHost
	// Bridge is the root-namespace bridge; its address is Subnet.254.
	Bridge string

	opts   HostsOptions
	active *os.File // held shared while the set lives
	keys   []string // claimed by join, also for hosts not set up yet
}

// NSHost is one host of an NSHosts set.
type NSHost struct {
	Name string
	// Key is unique among live hosts (e.g. "01a": the index of its address
	// and its name): use it to name anything a test adds in the root
	// namespace for this host, so parallel sets do not collide.
	Key   string
	Netns string // network namespace, "kvmt-<key>"
	Veth  string // root end of the host's link to the bridge, "kvmv-<key>"
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

	hs = &NSHosts{Bridge: opts.Bridge, opts: opts}
	defer func() {
		if err != nil {
			_ = hs.Close()
		}
	}()
	keys, err := hs.join(ctx)
	if err != nil {
		return hs, err
	}
	for i, name := range opts.Names {
		idx, _ := strconv.Atoi(keys[i][:2])
		h := &NSHost{
			Name:     name,
			Key:      keys[i],
			Netns:    hostNetnsPrefix + keys[i],
			Veth:     hostVethPrefix + keys[i],
			IP:       fmt.Sprintf("%s.%d", opts.Subnet, idx),
			StateDir: filepath.Join(opts.StateRoot, keys[i]),
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
	veth := h.Veth
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

// join registers the set as live and claims a key per host: under the setup
// lock, the first live set removes a crashed run's leftovers and creates the
// bridge; every set then takes the lowest indices no state directory holds
// (a directory is created per key before the lock is released).
func (hs *NSHosts) join(ctx context.Context) ([]string, error) {
	opts := hs.opts
	lock, err := os.OpenFile(hostsLockFile, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("realstack: %w", err)
	}
	defer lock.Close()
	if err := flock(ctx, lock, syscall.LOCK_EX); err != nil {
		return nil, err
	}
	active, err := os.OpenFile(hostsActiveFile, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("realstack: %w", err)
	}
	hs.active = active
	alone := syscall.Flock(int(active.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil
	if alone {
		// No live set: anything left is from a crash.
		if err := CleanupHostNamespaces(opts.StateRoot, opts.Bridge); err != nil {
			return nil, err
		}
	}
	// Converting the lock is safe here: every other set waits on lock.
	if err := flock(ctx, active, syscall.LOCK_SH); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.StateRoot, 0o755); err != nil {
		return nil, fmt.Errorf("realstack: %w", err)
	}
	// QEMU runs as libvirt-qemu and must traverse every parent of its files.
	if err := chmodParents(opts.StateRoot); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join("/sys/class/net", opts.Bridge)); err != nil {
		for _, args := range [][]string{
			{"link", "add", opts.Bridge, "type", "bridge"},
			{"addr", "add", opts.Subnet + ".254/24", "dev", opts.Bridge},
			{"link", "set", opts.Bridge, "up"},
		} {
			if _, err := run(ctx, "ip", args...); err != nil {
				return nil, fmt.Errorf("realstack: bridge: %w", err)
			}
		}
	}
	entries, err := os.ReadDir(opts.StateRoot)
	if err != nil {
		return nil, fmt.Errorf("realstack: %w", err)
	}
	used := map[int]bool{}
	for _, e := range entries {
		if m := hostKeyRE.FindStringSubmatch(e.Name()); m != nil {
			n, _ := strconv.Atoi(m[1])
			used[n] = true
		}
	}
	var keys []string
	next := 1
	for _, name := range opts.Names {
		for next <= maxHostKeys && used[next] {
			next++
		}
		if next > maxHostKeys {
			return nil, fmt.Errorf("realstack: more than %d live namespace hosts", maxHostKeys)
		}
		key := fmt.Sprintf("%02d%s", next, name)
		if err := os.Mkdir(filepath.Join(opts.StateRoot, key), 0o755); err != nil {
			return nil, fmt.Errorf("realstack: %w", err)
		}
		used[next] = true
		keys = append(keys, key)
		hs.keys = keys
	}
	return keys, nil
}

// Close stops every daemon and QEMU of the set's hosts (by the PIDs in their
// private run dirs), then removes their namespaces and state; the last live set
// also removes the bridge. Safe to call twice.
func (hs *NSHosts) Close() error {
	if hs == nil || hs.active == nil {
		return nil
	}
	errs := []error{cleanupHosts(hs.opts.StateRoot, hs.keys)}

	// A set that failed during join may not hold the setup lock's turn yet;
	// taking it here orders the bridge's removal against other sets' joins.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if lock, err := os.OpenFile(hostsLockFile, os.O_CREATE|os.O_RDWR, 0o644); err != nil {
		errs = append(errs, err)
	} else {
		if err := flock(ctx, lock, syscall.LOCK_EX); err != nil {
			errs = append(errs, err)
		} else {
			// Closing the file drops this set's shared hold.
			hs.active.Close()
			if last, err := os.OpenFile(hostsActiveFile, os.O_CREATE|os.O_RDWR, 0o644); err == nil {
				if syscall.Flock(int(last.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
					errs = append(errs, CleanupHostNamespaces(hs.opts.StateRoot, hs.opts.Bridge))
				}
				last.Close()
			}
		}
		lock.Close()
	}
	hs.active.Close()
	hs.active = nil
	return errors.Join(errs...)
}

// CleanupHostNamespaces removes what NewHostNamespaces created under stateRoot: it
// stops the processes named in each host's PID files (all at once: libvirtd takes ~2 s
// to exit), deletes the host namespaces and the bridge, and removes the state. It
// touches nothing it has no record of. Used by Close, at start-up after a crash, and
// by scripts/realstack-down.sh.
func CleanupHostNamespaces(stateRoot, bridge string) error {
	entries, err := os.ReadDir(stateRoot)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("realstack: %w", err)
	}
	var keys []string
	for _, e := range entries {
		if e.IsDir() {
			keys = append(keys, e.Name())
		}
	}
	var errs []error
	if err := cleanupHosts(stateRoot, keys); err != nil {
		errs = append(errs, err)
	}
	if _, err := os.Stat(filepath.Join("/sys/class/net", bridge)); err == nil {
		if _, err := run(context.Background(), "ip", "link", "del", bridge); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// cleanupHosts stops the recorded processes of the hosts whose state
// directories under stateRoot are named keys (all at once: libvirtd takes ~2 s
// to exit), deletes their namespaces and veths, then their state.
func cleanupHosts(stateRoot string, keys []string) error {
	var ds []daemon
	for _, k := range keys {
		ds = append(ds, hostDaemons(filepath.Join(stateRoot, k))...)
	}
	var errs []error
	if err := stopDaemons(DefaultStopTimeout, ds...); err != nil {
		errs = append(errs, err)
	}
	for _, k := range keys {
		// Plain names are state directories of runs before host keys.
		if !hostKeyRE.MatchString(k) && !hostNameRE.MatchString(k) {
			continue
		}
		ns := hostNetnsPrefix + k
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			if _, err := run(context.Background(), "ip", "netns", "del", ns); err != nil {
				errs = append(errs, err)
			}
		}
		// A host whose namespace is already gone may have left its veth's root end.
		_ = exec.Command("ip", "link", "del", hostVethPrefix+k).Run()
	}
	if len(errs) == 0 {
		// Bind mounts die with their namespace's last process, so this only deletes
		// our copies, never the system's /etc/libvirt.
		for _, k := range keys {
			if err := os.RemoveAll(filepath.Join(stateRoot, k)); err != nil {
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
