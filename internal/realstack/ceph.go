package realstack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// DefaultCephRoot holds the state of the one-node Ceph cluster StartCeph starts.
// A fixed path, so that a later run (or scripts/realstack-down.sh) finds and stops
// what a crashed run left, by the PIDs recorded there.
const DefaultCephRoot = "/var/tmp/kvm-realstack/ceph"

// Ceph ports: msgr2 and the legacy protocol. QEMU and libvirt, given a pool's
// <host port='6789'/>, speak v1 there; the ceph tools prefer v2.
const (
	cephMonPortV2 = 3300
	cephMonPortV1 = 6789
)

// CephOptions configures StartCeph.
type CephOptions struct {
	// Addr is the address the mon, mgr and OSD listen on; every client (the
	// namespace hosts' libvirtd and QEMU) must reach it. Required.
	Addr string
	// Dir holds the cluster's state; default DefaultCephRoot. It is
	// emptied first.
	Dir string
	// Pool is the rbd pool to create (default "kvm"), Client the cephx
	// client allowed to use it (default "kvm", i.e. client.kvm).
	Pool, Client string
	// DeviceBytes is the capacity the memstore OSD reports (default 8 GiB).
	// Memory holds only what is written: objects of a sparse rbd image
	// exist only where the guest wrote.
	DeviceBytes int64
}

// Ceph is a running one-node Ceph cluster: one mon, one mgr and one OSD on the
// memstore object store (no disk), cephx on, no systemd. Its processes are
// recorded by PID in its run directory and stopped by Close.
type Ceph struct {
	Dir  string
	Conf string // ceph.conf, with the admin keyring: for the ceph/rbd tools
	// MonHost and MonPort are what a libvirt rbd pool's <host> names (v1).
	MonHost string
	MonPort int
	// Pool is the rbd pool; Client the cephx user (without "client.") and
	// Key its secret, base64 as libvirt's secret-set-value takes it.
	Pool, Client, Key string
	// Started is how long the cluster took to come up.
	Started time.Duration

	lock *os.File // cephLockFile, held while the cluster lives
}

// cephLockFile makes clusters queue: each listens on the fixed monitor ports
// and a start removes whatever a crashed run left in its directory, so a
// second cluster at once (tests of two packages run in parallel) would kill
// the first.
const cephLockFile = "/run/kvm-realstack-ceph.lock"

// cephDaemons are the daemons of a cluster, by their PID file in run/.
var cephDaemons = []struct{ pidFile, comm string }{
	{"osd.0.pid", "ceph-osd"},
	{"mgr.x.pid", "ceph-mgr"},
	{"mon.a.pid", "ceph-mon"},
}

// StartCeph creates and starts a one-node cluster with an rbd pool (size 1,
// rbd application, layering on by default for its images) and a cephx client
// limited to it. On error everything started is stopped.
func StartCeph(ctx context.Context, opts CephOptions) (c *Ceph, err error) {
	if opts.Addr == "" {
		return nil, errors.New("realstack: ceph: no address to listen on")
	}
	if opts.Dir == "" {
		opts.Dir = DefaultCephRoot
	}
	if opts.Pool == "" {
		opts.Pool = "kvm"
	}
	if opts.Client == "" {
		opts.Client = "kvm"
	}
	if opts.DeviceBytes <= 0 {
		opts.DeviceBytes = 8 << 30
	}
	for _, tool := range []string{"ceph-mon", "ceph-mgr", "ceph-osd", "ceph", "rbd", "ceph-authtool", "monmaptool"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("realstack: ceph: %s not installed (scripts/install-deps.sh)", tool)
		}
	}
	lock, err := os.OpenFile(cephLockFile, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("realstack: ceph: %w", err)
	}
	if err := flock(ctx, lock, syscall.LOCK_EX); err != nil {
		lock.Close()
		return nil, err
	}
	defer func() {
		if err != nil {
			lock.Close()
		}
	}()
	t0 := time.Now()
	// A crashed run's cluster would hold the ports.
	if err := CleanupCeph(opts.Dir); err != nil {
		return nil, err
	}
	d := opts.Dir
	for _, sub := range []string{"mon", "mgr", "osd", "run", "log"} {
		if err := os.MkdirAll(filepath.Join(d, sub), 0o700); err != nil {
			return nil, fmt.Errorf("realstack: ceph: %w", err)
		}
	}
	c = &Ceph{Dir: d, Conf: filepath.Join(d, "ceph.conf"), MonHost: opts.Addr, MonPort: cephMonPortV1,
		Pool: opts.Pool, Client: opts.Client, lock: lock}
	defer func() {
		if err != nil {
			_ = CleanupCeph(d)
		}
	}()
	fsid, err := randomUUID()
	if err != nil {
		return nil, err
	}
	monAddrs := fmt.Sprintf("[v2:%s:%d,v1:%s:%d]", opts.Addr, cephMonPortV2, opts.Addr, cephMonPortV1)
	// One node, one copy: size 1 pools, no redundancy warnings, CRUSH
	// placing across OSDs, not hosts. Few PGs keep peering fast. The mon's
	// free-space checks are off: the machine's disk is not the cluster's.
	conf := fmt.Sprintf(`[global]
fsid = %[1]s
mon host = %[2]s
public addr = %[3]s
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
run dir = %[4]s/run
admin socket = %[4]s/run/$name.asok
pid file = %[4]s/run/$name.pid
log file = %[4]s/log/$name.log
keyring = %[4]s/$name.keyring
mon data = %[4]s/mon
mgr data = %[4]s/mgr
osd data = %[4]s/osd
osd objectstore = memstore
memstore device bytes = %[5]d
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
mgr initial modules =
`, fsid, monAddrs, opts.Addr, d, opts.DeviceBytes)
	if err := os.WriteFile(c.Conf, []byte(conf), 0o600); err != nil {
		return nil, fmt.Errorf("realstack: ceph: %w", err)
	}
	monKeyring := filepath.Join(d, "mon.a.keyring")
	adminKeyring := filepath.Join(d, "client.admin.keyring")
	monmap := filepath.Join(d, "monmap")
	steps := [][]string{
		{"ceph-authtool", "--create-keyring", monKeyring, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"},
		{"ceph-authtool", "--create-keyring", adminKeyring, "--gen-key", "-n", "client.admin",
			"--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *"},
		{"ceph-authtool", monKeyring, "--import-keyring", adminKeyring},
		{"monmaptool", "--create", "--addv", "a", monAddrs, "--fsid", fsid, monmap},
		{"ceph-mon", "-c", c.Conf, "--mkfs", "-i", "a", "--monmap", monmap, "--keyring", monKeyring},
		{"ceph-mon", "-c", c.Conf, "-i", "a"}, // daemonizes once listening
	}
	for _, s := range steps {
		if _, err := run(ctx, s[0], s[1:]...); err != nil {
			return nil, fmt.Errorf("realstack: ceph: %w", err)
		}
	}

	// The OSD: registered with its own cephx key, then created and started.
	osdKey, err := run(ctx, "ceph-authtool", "--gen-print-key")
	if err != nil {
		return nil, fmt.Errorf("realstack: ceph: %w", err)
	}
	osdKey = strings.TrimSpace(osdKey)
	secrets := filepath.Join(d, "osd-secrets.json")
	if err := os.WriteFile(secrets, []byte(fmt.Sprintf(`{"cephx_secret": %q}`, osdKey)), 0o600); err != nil {
		return nil, fmt.Errorf("realstack: ceph: %w", err)
	}
	osdUUID, err := randomUUID()
	if err != nil {
		return nil, err
	}
	id, err := c.Tool(ctx, "ceph", "osd", "new", osdUUID, "-i", secrets)
	if err != nil {
		return nil, err
	}
	if id = strings.TrimSpace(id); id != "0" {
		return nil, fmt.Errorf("realstack: ceph: the new OSD is osd.%s, want osd.0", id)
	}
	for _, s := range [][]string{
		{"ceph-authtool", "--create-keyring", filepath.Join(d, "osd.0.keyring"), "--name", "osd.0", "--add-key", osdKey},
		{"ceph-osd", "-c", c.Conf, "-i", "0", "--mkfs", "--osd-uuid", osdUUID},
		{"ceph-osd", "-c", c.Conf, "-i", "0"},
	} {
		if _, err := run(ctx, s[0], s[1:]...); err != nil {
			return nil, fmt.Errorf("realstack: ceph: %w", err)
		}
	}
	// The mgr serves pool statistics (libvirt's pool capacity and free space).
	if _, err := c.Tool(ctx, "ceph", "auth", "get-or-create", "mgr.x", "mon", "allow profile mgr", "osd", "allow *",
		"-o", filepath.Join(d, "mgr.x.keyring")); err != nil {
		return nil, err
	}
	if _, err := run(ctx, "ceph-mgr", "-c", c.Conf, "-i", "x"); err != nil {
		return nil, fmt.Errorf("realstack: ceph: %w", err)
	}

	// The rbd pool and its client. `rbd pool init` writes to the pool, so it
	// returns once the pool's placement groups are active.
	for _, s := range [][]string{
		{"ceph", "osd", "pool", "create", opts.Pool, "8", "8"},
		{"rbd", "pool", "init", opts.Pool},
	} {
		if _, err := c.Tool(ctx, s[0], s[1:]...); err != nil {
			return nil, err
		}
	}
	key, err := c.Tool(ctx, "ceph", "auth", "get-or-create-key", "client."+opts.Client,
		"mon", "profile rbd", "osd", "profile rbd pool="+opts.Pool, "mgr", "profile rbd pool="+opts.Pool)
	if err != nil {
		return nil, err
	}
	c.Key = strings.TrimSpace(key)
	c.Started = time.Since(t0)
	return c, nil
}

// Tool runs a ceph tool (ceph, rbd) as client.admin against the cluster and
// returns its standard output.
func (c *Ceph) Tool(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, append([]string{"-c", c.Conf, "--id", "admin"}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("realstack: ceph: %s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// Close stops the cluster and removes its state. Safe to call twice.
func (c *Ceph) Close() error {
	if c == nil {
		return nil
	}
	err := CleanupCeph(c.Dir)
	if c.lock != nil {
		c.lock.Close()
		c.lock = nil
	}
	return err
}

// CleanupCeph stops the Ceph daemons recorded in dir's run directory and
// removes dir. SIGKILL, not SIGTERM: the data is thrown away, and a memstore
// OSD asked to stop first writes every object it holds to its data directory.
func CleanupCeph(dir string) error {
	var ds []daemon
	for _, p := range cephDaemons {
		b, err := os.ReadFile(filepath.Join(dir, "run", p.pidFile))
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			if d := (daemon{name: p.comm, pid: pid}); d.alive() {
				ds = append(ds, d)
			}
		}
	}
	for _, d := range ds {
		_ = syscall.Kill(d.pid, syscall.SIGKILL)
	}
	if !waitGone(10*time.Second, ds) {
		return fmt.Errorf("realstack: ceph daemons survived SIGKILL: %v", ds)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("realstack: ceph: %w", err)
	}
	return nil
}

// StartCephForTest is StartCeph for a test: it fails the test when the
// cluster cannot start and stops it when the test ends.
func StartCephForTest(ctx context.Context, t testing.TB, opts CephOptions) *Ceph {
	t.Helper()
	c, err := StartCeph(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("stopping ceph: %v", err)
		}
	})
	t.Logf("one-node ceph (memstore, cephx) up on %s in %s", opts.Addr, c.Started.Round(100*time.Millisecond))
	return c
}

// DefineRBDPool does on host h what an operator does to give a libvirt
// access to the cluster: a private ceph secret holding the client's key
// (under secretUUID, which must be the same on every host a VM migrates
// between: the domain XML names it) and a running rbd pool called name on
// c's pool, authenticating with it.
func (h *NSHost) DefineRBDPool(ctx context.Context, c *Ceph, name, secretUUID string) error {
	dir, err := os.MkdirTemp("", "kvm-rbdpool-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	secretXML := fmt.Sprintf(`<secret ephemeral='no' private='yes'><uuid>%s</uuid><usage type='ceph'><name>client.%s secret</name></usage></secret>`,
		secretUUID, c.Client)
	poolXML := fmt.Sprintf(`<pool type='rbd'><name>%s</name><source><name>%s</name><host name='%s' port='%d'/>`+
		`<auth username='%s' type='ceph'><secret uuid='%s'/></auth></source></pool>`,
		name, c.Pool, c.MonHost, c.MonPort, c.Client, secretUUID)
	files := map[string]string{"secret.xml": secretXML, "pool.xml": poolXML, "key": c.Key}
	for f, s := range files {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(s), 0o600); err != nil {
			return err
		}
	}
	for _, args := range [][]string{
		{"secret-define", filepath.Join(dir, "secret.xml")},
		{"secret-set-value", secretUUID, "--file", filepath.Join(dir, "key")}, // base64, as ceph prints it
		{"pool-define", filepath.Join(dir, "pool.xml")},
		{"pool-start", name},
	} {
		if _, err := run(ctx, "virsh", append([]string{"-c", h.LocalURI}, args...)...); err != nil {
			return fmt.Errorf("realstack: host %s: %w", h.Name, err)
		}
	}
	return nil
}

// MemoryRSS sums the resident memory of the cluster's daemons, in MiB (the
// memstore OSD holds every object written in memory).
func (c *Ceph) MemoryRSS() map[string]int64 {
	out := map[string]int64{}
	for _, p := range cephDaemons {
		b, err := os.ReadFile(filepath.Join(c.Dir, "run", p.pidFile))
		if err != nil {
			continue
		}
		st, err := os.ReadFile("/proc/" + strings.TrimSpace(string(b)) + "/status")
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(st), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				out[p.comm] = kb >> 10
			}
		}
	}
	return out
}
