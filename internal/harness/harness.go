// Package harness starts real kvm-hostd processes for tests: N hosts on
// loopback, on the embedded default (libvirt's test driver + in-memory
// OVSDB) or on the real stack (qemu:///system + Open vSwitch). Tests talk to
// them over real HTTP exactly as the provider does in production.
package harness

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

// Options choose how many hosts to start and on what.
type Options struct {
	// Hosts are the host names; default ["host-a", "host-b"].
	Hosts []string
	// Labels per host name, passed as --labels.
	Labels map[string]map[string]string
	// TunnelIPs per host name, passed as --tunnel-ip.
	TunnelIPs map[string]string
	// LibvirtURI defaults to test:///default (each kvm-hostd is its own
	// process, so each has its own test-driver state).
	LibvirtURI string
	// OVSDB defaults to "embedded" on the test driver; with a real libvirt
	// it must be given (RealOptions takes it from KVM_TEST_OVSDB), so that a
	// real-stack test never runs on the embedded OVSDB unless asked to.
	OVSDB string
	// PoolDir is the root for per-host pool directories on real libvirt;
	// must be traversable by libvirt-qemu. Default realstack.TestPoolRoot,
	// which the cluster empties when it stops (see realstack.UseTestPool).
	PoolDir string
	// PoolDirs per host name override the pool directory exactly (no
	// per-cluster subdirectory), e.g. the same path on every namespace host,
	// as live migration of linked clones needs.
	PoolDirs map[string]string
	// ExtraArgs are appended to every kvm-hostd command line.
	ExtraArgs []string
	// Env adds environment variables to every kvm-hostd.
	Env []string
	// ListenIPs per host name (default 127.0.0.1), e.g. a host's address in
	// its network namespace.
	ListenIPs map[string]string
	// ExtraHostArgs per host name, appended after ExtraArgs.
	ExtraHostArgs map[string][]string
	// Wrap, when set, builds the command that runs kvm-hostd for a host, so
	// it can run "on" a simulated host (e.g. realstack's NSHost.Command).
	Wrap func(host string, argv []string) *exec.Cmd
}

// Cluster is a set of running kvm-hostd processes.
type Cluster struct {
	Token string
	Dir   string
	Hosts []*Host
	opts  Options
	// release drops the cluster's reference on the tests' pool on the
	// system libvirt; the last reference removes everything left there.
	release func() error
}

// Host is one kvm-hostd process.
type Host struct {
	Name     string
	URL      string
	args     []string
	env      []string
	cmd      *exec.Cmd
	logPath  string
	waitDone chan struct{}
	wrap     func(host string, argv []string) *exec.Cmd
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// Binary returns the kvm-hostd binary to run: $KVM_HOSTD_BIN if set (the
// Makefile builds it once), else it is built once per test process.
func Binary() (string, error) {
	buildOnce.Do(func() {
		if p := os.Getenv("KVM_HOSTD_BIN"); p != "" {
			binPath, buildErr = filepath.Abs(p)
			return
		}
		root, err := ModuleRoot()
		if err != nil {
			buildErr = err
			return
		}
		dir, err := os.MkdirTemp("", "kvm-hostd-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "kvm-hostd")
		cmd := exec.Command("go", "build", "-o", binPath, "./backend/cmd/kvm-hostd")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building kvm-hostd: %v\n%s", err, out)
		}
	})
	return binPath, buildErr
}

// ModuleRoot finds the repository root (the directory holding go.mod).
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("go.mod not found above the working directory")
		}
		dir = parent
	}
}

// Start starts the hosts and registers their shutdown with t.Cleanup.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	c, err := StartCluster(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			c.DumpLogs(t)
		}
		if err := c.stop(); err != nil {
			t.Errorf("cleaning up the cluster: %v", err)
		}
	})
	return c
}

// systemLibvirt reports whether the hosts of opts run on this machine's own
// libvirt (not the test driver, not a namespace host's private libvirtd).
func (opts Options) systemLibvirt() bool {
	return !strings.HasPrefix(opts.LibvirtURI, "test:") && opts.Wrap == nil
}

// StartCluster starts the hosts; callers must Stop the cluster.
func StartCluster(opts Options) (*Cluster, error) {
	if len(opts.Hosts) == 0 {
		opts.Hosts = []string{"host-a", "host-b"}
	}
	if opts.LibvirtURI == "" {
		opts.LibvirtURI = "test:///default"
	}
	if opts.OVSDB == "" {
		if !strings.HasPrefix(opts.LibvirtURI, "test:") {
			return nil, fmt.Errorf("harness: libvirt %s needs an OVSDB: set Options.OVSDB (harness.RealOptions takes KVM_TEST_OVSDB)", opts.LibvirtURI)
		}
		opts.OVSDB = "embedded"
	}
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "kvm-harness-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{Token: "harness-token-" + randomSuffix(), Dir: dir, opts: opts}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(c.Token+"\n"), 0o600); err != nil {
		return nil, err
	}
	poolRoot := opts.PoolDir
	if poolRoot == "" {
		poolRoot = realstack.TestPoolRoot
	}
	if opts.systemLibvirt() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		c.release, err = realstack.UseTestPool(ctx, opts.LibvirtURI)
		cancel()
		if err != nil {
			_ = os.RemoveAll(dir)
			return nil, err
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, len(opts.Hosts))
	for i, name := range opts.Hosts {
		poolDir := filepath.Join(dir, name, "pool")
		if !strings.HasPrefix(opts.LibvirtURI, "test:") {
			// QEMU runs as libvirt-qemu: every parent must be traversable,
			// which a 0700 temp dir is not. One libvirtd has one pool named
			// "default", so every cluster on it shares this directory.
			poolDir = filepath.Join(poolRoot, "pool")
		}
		if d := opts.PoolDirs[name]; d != "" {
			poolDir = d
		}
		listenIP := "127.0.0.1"
		if ip := opts.ListenIPs[name]; ip != "" {
			listenIP = ip
		}
		args := []string{
			"--name", name, "--listen", listenIP + ":0",
			"--libvirt-uri", opts.LibvirtURI, "--ovsdb", opts.OVSDB,
			"--pool-dir", poolDir, "--token-file", tokenFile,
			// Its own state (maintenance, rbd volume records), as on a real
			// host: the default directory would be shared by every test host
			// on this machine and outlive the test.
			"--state-dir", filepath.Join(dir, name, "state"),
			"--audit-log", filepath.Join(dir, name+"-audit.log"),
			"--log-format", "text",
			// Test image servers and the other test hosts listen on
			// loopback, which kvm-hostd refuses to fetch from by default.
			// A test of that default passes its own --fetch-allow (the
			// last one wins).
			"--fetch-allow", "127.0.0.0/8,::1/128",
		}
		if l := opts.Labels[name]; len(l) > 0 {
			args = append(args, "--labels", formatLabels(l))
		}
		if ip := opts.TunnelIPs[name]; ip != "" {
			args = append(args, "--tunnel-ip", ip)
		}
		args = append(args, opts.ExtraArgs...)
		args = append(args, opts.ExtraHostArgs[name]...)
		h := &Host{Name: name, args: append([]string{bin}, args...), env: opts.Env, logPath: filepath.Join(dir, name+".log"), wrap: opts.Wrap}
		c.Hosts = append(c.Hosts, h)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = h.Start()
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			if serr := c.stop(); serr != nil {
				err = fmt.Errorf("%w (and cleaning up: %v)", err, serr)
			}
			return nil, err
		}
	}
	if opts.systemLibvirt() {
		// kvm-hostd marks its pool autostart; the tests' pool must not come
		// back when libvirtd restarts after a crashed run.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := realstack.DisableTestPoolAutostart(ctx, opts.LibvirtURI)
		cancel()
		if err != nil {
			_ = c.stop()
			return nil, err
		}
	}
	return c, nil
}

func formatLabels(l map[string]string) string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + l[k]
	}
	return strings.Join(parts, ",")
}

// Start (re)starts the host's process and waits until it listens. A restart
// picks a new port; URL is updated.
func (h *Host) Start() error {
	logf, err := os.OpenFile(h.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	var cmd *exec.Cmd
	if h.wrap != nil {
		cmd = h.wrap(h.Name, h.args)
	} else {
		cmd = exec.Command(h.args[0], h.args[1:]...)
	}
	cmd.Env = append(os.Environ(), h.env...)
	cmd.Stderr = logf
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	// Own process group, so a test's Ctrl-C doesn't orphan it and Stop
	// kills exactly this process.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting kvm-hostd %s: %w", h.Name, err)
	}
	h.cmd = cmd
	urlc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		sent := false
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			if i := strings.Index(line, " listening on "); i >= 0 && !sent {
				urlc <- strings.TrimSpace(line[i+len(" listening on "):])
				sent = true
			}
		}
		if !sent {
			close(urlc)
		}
	}()
	h.waitDone = make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(h.waitDone)
	}()
	select {
	case u, ok := <-urlc:
		if !ok {
			<-h.waitDone
			return fmt.Errorf("kvm-hostd %s exited before listening:\n%s", h.Name, tail(h.logPath, 40))
		}
		if _, err := url.Parse(u); err != nil {
			return fmt.Errorf("kvm-hostd %s printed a bad URL %q", h.Name, u)
		}
		h.URL = u
		return nil
	case <-time.After(60 * time.Second):
		_ = h.Kill()
		return fmt.Errorf("kvm-hostd %s did not listen within 60s:\n%s", h.Name, tail(h.logPath, 40))
	}
}

// Stop sends SIGTERM (graceful shutdown) and waits, killing after 20s.
func (h *Host) Stop() error {
	if h.cmd == nil || h.cmd.Process == nil {
		return nil
	}
	select {
	case <-h.waitDone:
		return nil
	default:
	}
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.waitDone:
	case <-time.After(20 * time.Second):
		_ = h.cmd.Process.Kill()
		<-h.waitDone
	}
	return nil
}

// Kill stops the host abruptly, as a crash or power loss would.
func (h *Host) Kill() error {
	if h.cmd == nil || h.cmd.Process == nil {
		return nil
	}
	_ = h.cmd.Process.Kill()
	<-h.waitDone
	return nil
}

// PID is the process Start began (kvm-hostd itself: a Wrap must exec it,
// as nsenter without --fork does), 0 before Start.
func (h *Host) PID() int {
	if h.cmd == nil || h.cmd.Process == nil {
		return 0
	}
	return h.cmd.Process.Pid
}

// Running reports whether the process Start began has not exited: a test
// that attacks a host proves with it that the host survived.
func (h *Host) Running() bool {
	if h.cmd == nil || h.waitDone == nil {
		return false
	}
	select {
	case <-h.waitDone:
		return false
	default:
		return true
	}
}

// Log returns the host's log so far.
func (h *Host) Log() string {
	b, _ := os.ReadFile(h.logPath)
	return string(b)
}

// Host returns the host with the given name, or nil.
func (c *Cluster) Host(name string) *Host {
	for _, h := range c.Hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// Stop stops every host and removes the cluster directory and, on the
// system libvirt, what the tests left there (see realstack.UseTestPool).
func (c *Cluster) Stop() { _ = c.stop() }

func (c *Cluster) stop() error {
	var wg sync.WaitGroup
	for _, h := range c.Hosts {
		wg.Add(1)
		go func() { defer wg.Done(); _ = h.Stop() }()
	}
	wg.Wait()
	_ = os.RemoveAll(c.Dir)
	if c.release == nil {
		return nil
	}
	release := c.release
	c.release = nil
	return release()
}

// KVMHosts renders the KVM_HOSTS value for the cluster.
func (c *Cluster) KVMHosts() string {
	parts := make([]string, len(c.Hosts))
	for i, h := range c.Hosts {
		parts[i] = h.Name + "=" + h.URL
	}
	return strings.Join(parts, ",")
}

// ProviderHCL renders a provider block for the cluster.
func (c *Cluster) ProviderHCL() string {
	var b strings.Builder
	b.WriteString("provider \"kvm\" {\n  token = \"" + c.Token + "\"\n  hosts = {\n")
	for _, h := range c.Hosts {
		fmt.Fprintf(&b, "    %q = { endpoint = %q }\n", h.Name, h.URL)
	}
	b.WriteString("  }\n}\n")
	return b.String()
}

// DumpLogs writes every host's log to the test log.
func (c *Cluster) DumpLogs(t testing.TB) {
	for _, h := range c.Hosts {
		t.Logf("---- kvm-hostd %s log ----\n%s", h.Name, tail(h.logPath, 200))
	}
}

// Wait polls cond until it is true or the timeout passes.
func Wait(ctx context.Context, timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
	return cond()
}

func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	b, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func randomSuffix() string {
	return fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano()%1e9)
}

// RealOptions points opts at the real stack that `make test` starts
// (KVM_TEST_LIBVIRT_URI, usually qemu:///system, and KVM_TEST_OVSDB, an Open
// vSwitch, or "embedded" only when set so). When either is missing the test
// is skipped, or fails when the real stack was requested (see
// realstack.Unavailable). Real tests share one libvirtd: give objects names
// unique to the test.
func RealOptions(t testing.TB, opts Options) Options {
	t.Helper()
	opts.LibvirtURI = realstack.RequireLibvirtURI(t)
	opts.OVSDB = realstack.RequireOVSDB(t)
	return opts
}
