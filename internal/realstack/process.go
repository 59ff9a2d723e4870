// Package realstack starts the real daemons the real-stack tests and demos need —
// libvirtd/virtlogd, private Open vSwitch instances, and several independent "hosts"
// in network namespaces — and stops exactly the processes it started, by PID.
//
// Everything here needs root and the Debian packages installed by
// scripts/install-deps.sh. It shells out to the daemons' own tools (virsh, ovs-vsctl,
// ip, nsenter) because it manages processes, not API objects; the product code talks
// to libvirt and OVSDB through their Go bindings.
package realstack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// DefaultStopTimeout is how long a daemon gets to exit after SIGTERM before SIGKILL.
// libvirtd takes about 2 s to shut down on these machines.
const DefaultStopTimeout = 15 * time.Second

// daemon is a process we started, identified by PID and its command name so that a
// recycled PID is never signalled.
type daemon struct {
	name string // /proc/PID/comm, e.g. "libvirtd"
	pid  int
}

func (d daemon) String() string { return fmt.Sprintf("%s[%d]", d.name, d.pid) }

// alive reports whether the PID still runs the program we started. A zombie counts
// as gone: daemonized processes are reparented to PID 1, which may reap late.
func (d daemon) alive() bool {
	if d.pid <= 0 || syscall.Kill(d.pid, 0) != nil {
		return false
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", d.pid))
	if err != nil || strings.TrimSpace(string(comm)) != d.name {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", d.pid))
	if err != nil {
		return false
	}
	// Field 3 (state) follows the parenthesised command name.
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
		return false
	}
	return true
}

// stopDaemons sends SIGTERM to all of them at once (shutdowns overlap), waits up to
// timeout, then SIGKILLs whatever is left.
func stopDaemons(timeout time.Duration, daemons ...daemon) error {
	if timeout <= 0 {
		timeout = DefaultStopTimeout
	}
	for _, d := range daemons {
		if d.alive() {
			_ = syscall.Kill(d.pid, syscall.SIGTERM)
		}
	}
	if waitGone(timeout, daemons) {
		return nil
	}
	var killed []string
	for _, d := range daemons {
		if d.alive() {
			_ = syscall.Kill(d.pid, syscall.SIGKILL)
			killed = append(killed, d.String())
		}
	}
	if !waitGone(5*time.Second, daemons) {
		return fmt.Errorf("realstack: processes survived SIGKILL: %s", strings.Join(killed, ", "))
	}
	return nil
}

func waitGone(timeout time.Duration, daemons []daemon) bool {
	deadline := time.Now().Add(timeout)
	for {
		anyAlive := false
		for _, d := range daemons {
			if d.alive() {
				anyAlive = true
				break
			}
		}
		if !anyAlive {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// readPIDFile polls for a PID file that a daemonizing program writes after forking.
func readPIDFile(ctx context.Context, path string) (int, error) {
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil && pid > 0 {
				return pid, nil
			}
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("realstack: waiting for pid file %s: %w", path, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// run executes a command and folds its output into the error, since the daemons'
// tools explain failures only on stdout/stderr.
func run(ctx context.Context, name string, args ...string) (string, error) {
	return runCmd(exec.CommandContext(ctx, name, args...))
}

func runCmd(cmd *exec.Cmd) (string, error) {
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	// A daemon that forks may keep the pipes open; do not wait on them forever.
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// flock takes an advisory lock on f, polling so that ctx can cancel the wait
// (a blocking flock(2) cannot be interrupted).
func flock(ctx context.Context, f *os.File, how int) error {
	for {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			return fmt.Errorf("realstack: flock %s: %w", f.Name(), err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("realstack: waiting for lock %s: %w", f.Name(), ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// pollUntil calls check every interval until it returns nil or ctx ends; the last
// error explains a timeout better than "context deadline exceeded" alone.
func pollUntil(ctx context.Context, interval time.Duration, check func(context.Context) error) error {
	for {
		err := check(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-time.After(interval):
		}
	}
}
