package realstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Paths of the system libvirt this package may start. The PID files double as the
// record of what realstack started: only processes named in them are ever stopped
// (by Daemons.Stop or scripts/realstack-down.sh), never a libvirtd someone else runs.
const (
	SystemURI           = "qemu:///system"
	LibvirtRunDir       = "/run/libvirt"
	LibvirtSocket       = LibvirtRunDir + "/libvirt-sock"
	LibvirtdPIDFile     = LibvirtRunDir + "/realstack-libvirtd.pid"
	VirtlogdPIDFile     = LibvirtRunDir + "/realstack-virtlogd.pid"
	DefaultLockFile     = "/run/kvm-realstack.lock"
	DefaultUsersFile    = "/run/kvm-realstack.users"
	defaultStartWait    = 90 * time.Second
	libvirtProbeTimeout = 30 * time.Second
)

// KeepEnv, when "1", makes Daemons.Stop leave the daemons running; the test run then
// ends with scripts/realstack-down.sh. It saves the ~4 s libvirt warm-up per test
// package when `go test ./...` runs packages one after another.
const KeepEnv = "KVM_REALSTACK_KEEP"

// LibvirtOptions tunes EnsureLibvirt; the zero value is what tests want.
type LibvirtOptions struct {
	// StartTimeout bounds the wait for libvirtd to answer (the first answer takes
	// ~4 s on TCG-only machines while it probes QEMU). Default 90 s.
	StartTimeout time.Duration
	// StopTimeout is the SIGTERM grace period before SIGKILL. Default 15 s.
	StopTimeout time.Duration
	// KeepRunning makes Stop only drop this handle's reference (see KeepEnv).
	KeepRunning bool
	// LockFile and UsersFile coordinate test processes; defaults under /run.
	LockFile, UsersFile string
}

// Daemons is a handle on the system libvirt (qemu:///system).
//
// Lifecycle across processes: `go test ./...` runs several test binaries at once,
// each calling EnsureLibvirt. The check-and-start runs under an exclusive flock on
// LockFile, and every live handle holds a shared flock on UsersFile. Stop drops that
// reference and, if no other handle remains and realstack started the daemons
// (its PID files name them), stops them by PID. The kernel drops the flocks of a
// crashed test process, so a crash never pins the daemons; in the worst case they stay
// up until scripts/realstack-down.sh.
type Daemons struct {
	// URI connects to this libvirt.
	URI string
	// Started is true when this call started libvirtd (false: it was already up).
	Started bool

	opts  LibvirtOptions
	users *os.File
}

// EnsureLibvirt returns a handle on a working qemu:///system, starting virtlogd and
// libvirtd if nothing answers. Callers must call Stop when done.
func EnsureLibvirt(ctx context.Context, opts LibvirtOptions) (*Daemons, error) {
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = defaultStartWait
	}
	if opts.LockFile == "" {
		opts.LockFile = DefaultLockFile
	}
	if opts.UsersFile == "" {
		opts.UsersFile = DefaultUsersFile
	}
	if os.Getenv(KeepEnv) == "1" {
		opts.KeepRunning = true
	}

	unlock, err := lockFile(ctx, opts.LockFile, syscall.LOCK_EX)
	if err != nil {
		return nil, err
	}
	defer unlock()

	users, err := os.OpenFile(opts.UsersFile, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("realstack: %w", err)
	}
	// Never blocks: exclusive holders of UsersFile also hold LockFile, which we hold.
	if err := flock(ctx, users, syscall.LOCK_SH); err != nil {
		users.Close()
		return nil, err
	}
	d := &Daemons{URI: SystemURI, opts: opts, users: users}

	if err := d.start(ctx); err != nil {
		_ = syscall.Flock(int(users.Fd()), syscall.LOCK_UN)
		users.Close()
		return nil, err
	}
	return d, nil
}

func (d *Daemons) start(ctx context.Context) error {
	if socketAnswers() && libvirtAnswers(ctx, d.URI) == nil {
		return nil
	}

	if err := os.MkdirAll(LibvirtRunDir, 0o755); err != nil {
		return fmt.Errorf("realstack: %w", err)
	}
	// A daemon already running here (just slow, e.g. still probing QEMU) must not get
	// a twin fighting over its sockets: wait for it instead.
	if len(findProcesses("virtlogd")) == 0 {
		if _, err := run(ctx, "virtlogd", "-d", "-p", VirtlogdPIDFile); err != nil {
			return fmt.Errorf("realstack: start virtlogd: %w", err)
		}
	}
	if len(findProcesses("libvirtd")) == 0 {
		if _, err := run(ctx, "libvirtd", "-d", "-p", LibvirtdPIDFile); err != nil {
			return fmt.Errorf("realstack: start libvirtd: %w", err)
		}
		d.Started = true
	}

	wctx, cancel := context.WithTimeout(ctx, d.opts.StartTimeout)
	defer cancel()
	err := pollUntil(wctx, 250*time.Millisecond, func(ctx context.Context) error {
		if !socketAnswers() {
			return errors.New("libvirt socket not accepting connections yet")
		}
		return libvirtAnswers(ctx, d.URI)
	})
	if err != nil {
		return fmt.Errorf("realstack: libvirtd did not answer on %s (see /var/log/libvirt): %w", d.URI, err)
	}
	return nil
}

// Stop drops this handle's reference and stops the daemons if it was the last one and
// realstack started them. Safe to call more than once.
func (d *Daemons) Stop() error {
	if d == nil || d.users == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	unlock, err := lockFile(ctx, d.opts.LockFile, syscall.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()

	users := d.users
	d.users = nil
	defer users.Close()
	if err := syscall.Flock(int(users.Fd()), syscall.LOCK_UN); err != nil {
		return fmt.Errorf("realstack: unlock %s: %w", users.Name(), err)
	}
	if d.opts.KeepRunning {
		return nil
	}
	// Getting the exclusive lock means no other handle, in any process, is alive.
	if syscall.Flock(int(users.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		return nil
	}
	return StopStartedLibvirt(d.opts.StopTimeout)
}

// StopStartedLibvirt stops the libvirtd and virtlogd that realstack started (as
// recorded in its PID files) regardless of other users; for cleanup at the end of a
// run. Daemons started by anyone else are left alone.
func StopStartedLibvirt(timeout time.Duration) error {
	var ds []daemon
	for _, f := range []struct{ path, name string }{
		{LibvirtdPIDFile, "libvirtd"},
		{VirtlogdPIDFile, "virtlogd"},
	} {
		b, err := os.ReadFile(f.path)
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			continue
		}
		ds = append(ds, daemon{name: f.name, pid: pid})
	}
	if err := stopDaemons(timeout, ds...); err != nil {
		return err
	}
	_ = os.Remove(LibvirtdPIDFile)
	_ = os.Remove(VirtlogdPIDFile)
	return nil
}

// socketAnswers is the cheap probe: does anything accept on libvirt's socket?
func socketAnswers() bool {
	c, err := net.DialTimeout("unix", LibvirtSocket, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// libvirtAnswers opens the QEMU driver and lists domains. Not `virsh version`: on
// these TCG-only machines it re-probes the QEMU binary on every call (~4-8 s).
func libvirtAnswers(ctx context.Context, uri string) error {
	ctx, cancel := context.WithTimeout(ctx, libvirtProbeTimeout)
	defer cancel()
	_, err := run(ctx, "virsh", "-c", uri, "list", "--all", "--name")
	return err
}

func lockFile(ctx context.Context, path string, how int) (unlock func(), err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("realstack: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("realstack: %w", err)
	}
	if err := flock(ctx, f, how); err != nil {
		f.Close()
		return nil, err
	}
	// Closing the descriptor releases the lock.
	return func() { f.Close() }, nil
}

// findProcesses lists processes called name in this process's mount and network
// namespaces (the daemons of NSHost hosts share the name but not the namespaces).
func findProcesses(name string) []daemon {
	selfMnt, _ := os.Readlink("/proc/self/ns/mnt")
	selfNet, _ := os.Readlink("/proc/self/ns/net")
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var found []daemon
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		d := daemon{name: name, pid: pid}
		if !d.alive() {
			continue
		}
		mnt, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
		netns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
		if mnt == selfMnt && netns == selfNet {
			found = append(found, d)
		}
	}
	return found
}

// LibvirtAnswers reports whether the system libvirt (SystemURI) is up and answers.
func LibvirtAnswers() bool {
	return socketAnswers() && libvirtAnswers(context.Background(), SystemURI) == nil
}
