package realstack

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// VswitchSchema is the OVS database schema shipped by Debian's openvswitch-common.
const VswitchSchema = "/usr/share/openvswitch/vswitch.ovsschema"

// OVS is a private Open vSwitch instance (ovsdb-server + ovs-vswitchd) whose database,
// sockets, logs and PID files all live in Dir, so it never touches the system OVS and
// several can run side by side (one per NSHost).
type OVS struct {
	// Dir holds conf.db, db.sock, the unixctl sockets, logs and PID files.
	Dir string
	// Endpoint is the OVSDB address for kvm-hostd --ovsdb and libovsdb: unix:<Dir>/db.sock.
	Endpoint string

	// wrap builds a command that runs where this instance lives (here, or in a netns).
	wrap    func(ctx context.Context, name string, args ...string) *exec.Cmd
	daemons []daemon
	// netns is the namespace EnsureIsolatedOVS created for it, deleted by Stop.
	netns string
}

// EnsureOVS starts a private OVS in dir (created if missing) in the current network
// namespace. Bridges in it must use datapath_type=netdev: there is no openvswitch
// kernel module here (see AddNetdevBridge).
//
// One such instance per network namespace: every ovs-vswitchd's userspace datapath
// is backed by a tap device named "ovs-netdev" in its namespace, and a second
// instance's first netdev bridge fails ("creating tap device failed: Device or
// resource busy") for as long as the first holds a netdev bridge. The stack's own
// instance (scripts/test.sh, realstack-up) is the one in the root namespace; any
// other private instance must use EnsureIsolatedOVS.
func EnsureOVS(ctx context.Context, dir string) (*OVS, error) {
	return startOVS(ctx, dir, exec.CommandContext)
}

// EnsureIsolatedOVS starts a private OVS in dir in a network namespace of its own
// (created here, deleted by Stop), so that it never competes with another
// instance for the namespace's userspace datapath (see EnsureOVS). Its bridges'
// interfaces live in that namespace (see Netns).
func EnsureIsolatedOVS(ctx context.Context, dir string) (*OVS, error) {
	id, err := randomUUID()
	if err != nil {
		return nil, err
	}
	ns := "rsovs-" + strings.ReplaceAll(id, "-", "")[:8]
	if _, err := run(ctx, "ip", "netns", "add", ns); err != nil {
		return nil, fmt.Errorf("realstack: %w", err)
	}
	wrap := func(ctx context.Context, name string, args ...string) *exec.Cmd {
		return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
	}
	o, err := startOVS(ctx, dir, wrap)
	if err != nil {
		_, _ = run(context.Background(), "ip", "netns", "del", ns)
		return nil, err
	}
	o.netns = ns
	return o, nil
}

// Netns is the network namespace EnsureIsolatedOVS created ("" for
// EnsureOVS): where interfaces for its bridges must be.
func (o *OVS) Netns() string { return o.netns }

func startOVS(ctx context.Context, dir string, wrap func(context.Context, string, ...string) *exec.Cmd) (o *OVS, err error) {
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "db.sock")
	// sun_path is 108 bytes; t.TempDir() under a long TMPDIR can exceed it.
	if len(sock) >= 108 {
		return nil, fmt.Errorf("realstack: OVS socket path too long for AF_UNIX (%d bytes): %s", len(sock), sock)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("realstack: %w", err)
	}
	o = &OVS{Dir: dir, Endpoint: "unix:" + sock, wrap: wrap}
	defer func() {
		if err != nil {
			_ = o.Stop()
		}
	}()

	db := filepath.Join(dir, "conf.db")
	if _, statErr := os.Stat(db); os.IsNotExist(statErr) {
		if _, err := o.run(ctx, "ovsdb-tool", "create", db, VswitchSchema); err != nil {
			return o, fmt.Errorf("realstack: create OVS database: %w", err)
		}
	}

	serverPID := filepath.Join(dir, "ovsdb-server.pid")
	if _, err := o.run(ctx, "ovsdb-server", db,
		"--remote=punix:"+sock,
		"--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
		"--unixctl="+filepath.Join(dir, "ovsdb-server.ctl"),
		"--pidfile="+serverPID,
		"--log-file="+filepath.Join(dir, "ovsdb-server.log"),
		"--detach", "--no-chdir"); err != nil {
		return o, fmt.Errorf("realstack: start ovsdb-server: %w", err)
	}
	if err := o.track(ctx, "ovsdb-server", serverPID); err != nil {
		return o, err
	}
	if _, err := o.Vsctl("--no-wait", "init"); err != nil {
		return o, fmt.Errorf("realstack: initialize OVS database: %w", err)
	}

	switchPID := filepath.Join(dir, "ovs-vswitchd.pid")
	if _, err := o.run(ctx, "ovs-vswitchd", "unix:"+sock,
		"--unixctl="+filepath.Join(dir, "ovs-vswitchd.ctl"),
		"--pidfile="+switchPID,
		"--log-file="+filepath.Join(dir, "ovs-vswitchd.log"),
		"--detach", "--no-chdir"); err != nil {
		return o, fmt.Errorf("realstack: start ovs-vswitchd: %w", err)
	}
	if err := o.track(ctx, "ovs-vswitchd", switchPID); err != nil {
		return o, err
	}
	// Ready means ovs-vswitchd has connected to the database and applied a
	// configuration. A read-only call such as "show" never waits for
	// vswitchd, so it proves nothing: a write without --no-wait bumps
	// next_cfg and returns only once vswitchd has caught up with it.
	if _, err := o.Vsctl("--timeout=30", "set", "Open_vSwitch", ".", "external_ids:realstack-ready=true"); err != nil {
		return o, fmt.Errorf("realstack: ovs-vswitchd not ready: %w", err)
	}
	return o, nil
}

func (o *OVS) track(ctx context.Context, name, pidFile string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	pid, err := readPIDFile(ctx, pidFile)
	if err != nil {
		return err
	}
	o.daemons = append(o.daemons, daemon{name: name, pid: pid})
	return nil
}

// env keeps the OVS tools' default run/log/db directories inside Dir, so nothing
// (control sockets, lock files) lands in the system OVS's /run/openvswitch.
func (o *OVS) env() []string {
	return append(os.Environ(), "OVS_RUNDIR="+o.Dir, "OVS_LOGDIR="+o.Dir, "OVS_DBDIR="+o.Dir, "OVS_SYSCONFDIR="+o.Dir)
}

func (o *OVS) run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := o.wrap(ctx, name, args...)
	cmd.Env = o.env()
	return runCmd(cmd)
}

// Vsctl runs ovs-vsctl against this instance. Pass --timeout=N for calls that wait
// for ovs-vswitchd; the whole call is bounded by two minutes regardless.
func (o *OVS) Vsctl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return o.run(ctx, "ovs-vsctl", append([]string{"--db=" + o.Endpoint}, args...)...)
}

// AddNetdevBridge creates a userspace (netdev) bridge and checks that ovs-vswitchd
// really realized it: ovs-vsctl exits 0 even when the datapath fails, leaving the
// reason only in the Interface "error" column.
func (o *OVS) AddNetdevBridge(name string) error {
	if _, err := o.Vsctl("--timeout=30", "--may-exist", "add-br", name,
		"--", "set", "bridge", name, "datapath_type=netdev"); err != nil {
		return fmt.Errorf("realstack: add bridge %s: %w", name, err)
	}
	// vswitchd records the bridge's internal port (ofport, or error) in the
	// database after the transaction ovs-vsctl waited for: right after
	// vswitchd started, the first read can still see neither. Wait for
	// that condition, not for a fixed time.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var failed error
	err := pollUntil(ctx, 50*time.Millisecond, func(context.Context) error {
		out, err := o.Vsctl("get", "interface", name, "error", "ofport")
		if err != nil {
			return fmt.Errorf("inspect bridge %s: %w", name, err)
		}
		var done bool
		_, done, err = bridgeRealized(out)
		if done {
			failed = err
			return nil
		}
		return err
	})
	if err == nil {
		err = failed
	}
	if err != nil {
		return fmt.Errorf("realstack: bridge %s not realized by ovs-vswitchd: %w%s", name, err, o.vswitchdErrors())
	}
	return nil
}

// vswitchdErrors quotes the warnings and errors of ovs-vswitchd's log: the
// database says only that a bridge has no port, the log says why.
func (o *OVS) vswitchdErrors() string {
	b, err := os.ReadFile(filepath.Join(o.Dir, "ovs-vswitchd.log"))
	if err != nil {
		return ""
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "|WARN|") || strings.Contains(l, "|ERR|") {
			out = append(out, "  "+l)
		}
	}
	if len(out) > 20 {
		out = out[len(out)-20:]
	}
	if len(out) == 0 {
		return ""
	}
	return "\novs-vswitchd.log:\n" + strings.Join(out, "\n")
}

// bridgeRealized reads `get interface BR error ofport`. done: vswitchd has
// recorded an outcome, and err then says whether it is a failure (an
// error message, or ofport -1); not done: nothing recorded yet.
func bridgeRealized(out string) (port int, done bool, err error) {
	fields := strings.Fields(out)
	if len(fields) < 2 {
		return 0, false, fmt.Errorf("unexpected ovs-vsctl output %q", strings.TrimSpace(out))
	}
	errCol, ofport := strings.Join(fields[:len(fields)-1], " "), fields[len(fields)-1]
	if errCol != "[]" {
		return 0, true, fmt.Errorf("error %s", errCol)
	}
	if ofport == "[]" {
		return 0, false, fmt.Errorf("no ofport recorded yet")
	}
	port, err = strconv.Atoi(ofport)
	if err != nil || port < 0 {
		return port, true, fmt.Errorf("no OpenFlow port (ofport %s)", ofport)
	}
	return port, true, nil
}

// Stop terminates the instance's daemons by PID. Dir is left for the caller (usually
// a t.TempDir) so logs survive a failure. Safe to call more than once.
func (o *OVS) Stop() error {
	if o == nil {
		return nil
	}
	// vswitchd first: it removes its bridges' tap devices on a clean exit.
	ds := make([]daemon, 0, len(o.daemons))
	for i := len(o.daemons) - 1; i >= 0; i-- {
		ds = append(ds, o.daemons[i])
	}
	o.daemons = nil
	for _, d := range ds {
		if err := stopDaemons(DefaultStopTimeout, d); err != nil {
			return err
		}
	}
	if o.netns != "" {
		if _, err := run(context.Background(), "ip", "netns", "del", o.netns); err != nil {
			return fmt.Errorf("realstack: %w", err)
		}
		o.netns = ""
	}
	return nil
}
