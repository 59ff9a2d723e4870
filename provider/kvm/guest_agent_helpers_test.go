package kvm

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

// guestAgent drives a domain's qemu-guest-agent from its namespace host
// (virsh qemu-agent-command): root inside the guest without SSH, the way
// a tenant's own automation would be.
type guestAgent struct {
	h      *realstack.NSHost
	domain string
	// logf, when set, is told when the agent went away and came back.
	logf func(format string, args ...any)
}

// call sends one agent command and returns its "return" value. libvirt
// refuses commands while it has no connection to the agent (the guest
// closed its end of the channel for a moment): such a command never
// reached the guest, so it is sent again once the agent is back.
func (g guestAgent) call(ctx context.Context, execute string, args any) (json.RawMessage, error) {
	ret, err := g.callOnce(ctx, execute, args)
	if err == nil || !strings.Contains(err.Error(), "agent is not connected") {
		return ret, err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
		if _, perr := g.callOnce(ctx, "guest-ping", nil); perr == nil {
			if g.logf != nil {
				g.logf("the guest agent of %s was disconnected for a moment (%v); sending %s again", g.domain, err, execute)
			}
			return g.callOnce(ctx, execute, args)
		}
	}
	return nil, err
}

func (g guestAgent) callOnce(ctx context.Context, execute string, args any) (json.RawMessage, error) {
	cmd := map[string]any{"execute": execute}
	if args != nil {
		cmd["arguments"] = args
	}
	b, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	out, err := g.h.CommandContext(ctx, "virsh", "-c", "qemu:///system", "qemu-agent-command", "--timeout", "30", g.domain, string(b)).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("agent %s on %s: %v: %s", execute, g.domain, err, strings.TrimSpace(string(out)))
	}
	var r struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return nil, fmt.Errorf("agent %s on %s: %v: %.200s", execute, g.domain, err, out)
	}
	return r.Return, nil
}

// waitReady waits until the agent answers guest-ping: a guest's address
// may come from its DHCP lease before its agent runs.
func (g guestAgent) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		_, err := g.callOnce(ctx, "guest-ping", nil)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the guest agent of %s did not answer within %s: %w", g.domain, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// start starts path with args in the guest as root and returns its PID
// without waiting for it: for a command that replaces the agent itself,
// whose exit status no agent is left to report.
func (g guestAgent) start(ctx context.Context, path string, args ...string) (int, error) {
	if args == nil {
		args = []string{}
	}
	ret, err := g.call(ctx, "guest-exec", map[string]any{"path": path, "arg": args, "capture-output": true})
	if err != nil {
		return 0, err
	}
	var started struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal(ret, &started); err != nil {
		return 0, err
	}
	return started.PID, nil
}

// exec runs path with args in the guest as root and waits for it: its
// exit code and combined output.
func (g guestAgent) exec(ctx context.Context, path string, args ...string) (int, string, error) {
	pid, err := g.start(ctx, path, args...)
	if err != nil {
		return 0, "", err
	}
	for {
		ret, err := g.call(ctx, "guest-exec-status", map[string]any{"pid": pid})
		if err != nil {
			return 0, "", err
		}
		var st struct {
			Exited   bool   `json:"exited"`
			ExitCode int    `json:"exitcode"`
			Out      string `json:"out-data"`
			Err      string `json:"err-data"`
		}
		if err := json.Unmarshal(ret, &st); err != nil {
			return 0, "", err
		}
		if st.Exited {
			o, _ := base64.StdEncoding.DecodeString(st.Out)
			e, _ := base64.StdEncoding.DecodeString(st.Err)
			return st.ExitCode, string(o) + string(e), nil
		}
		select {
		case <-ctx.Done():
			return 0, "", ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// run is exec that fails unless the command exits 0.
func (g guestAgent) run(ctx context.Context, path string, args ...string) (string, error) {
	code, out, err := g.exec(ctx, path, args...)
	if err == nil && code != 0 {
		err = fmt.Errorf("%s %s in %s exited %d: %s", path, strings.Join(args, " "), g.domain, code, strings.TrimSpace(out))
	}
	return out, err
}

// writeFile writes data to path in the guest (mode 0755), in chunks that
// fit one command line of virsh.
func (g guestAgent) writeFile(ctx context.Context, path string, data []byte) error {
	ret, err := g.call(ctx, "guest-file-open", map[string]any{"path": path, "mode": "w"})
	if err != nil {
		return err
	}
	var handle int
	if err := json.Unmarshal(ret, &handle); err != nil {
		return err
	}
	const chunk = 90 << 10 // base64: 120 KiB, under Linux's 128 KiB per argument
	for off := 0; off < len(data); off += chunk {
		end := min(off+chunk, len(data))
		if _, err := g.call(ctx, "guest-file-write", map[string]any{"handle": handle, "buf-b64": base64.StdEncoding.EncodeToString(data[off:end])}); err != nil {
			return err
		}
	}
	if _, err := g.call(ctx, "guest-file-close", map[string]any{"handle": handle}); err != nil {
		return err
	}
	_, err = g.run(ctx, "/bin/chmod", "0755", path)
	return err
}

// reboot reboots the guest from inside and waits until it runs again:
// a marker left in /run (a fresh tmpfs at every boot) is gone. The
// guest console is quoted when it does not come back within timeout.
func (g guestAgent) reboot(ctx context.Context, timeout time.Duration) error {
	const marker = "/run/kvm-test-before-reboot"
	if _, err := g.run(ctx, "/bin/touch", marker); err != nil {
		return err
	}
	if _, err := g.start(ctx, "/bin/systemctl", "reboot"); err != nil {
		return err
	}
	// Under TCG, OVMF with SMM (Secure Boot) has been seen to hang for good
	// right after a guest-initiated reset: "BdsDxe: starting Boot0001" and
	// then nothing, one core busy, for more than 12 minutes. That is the
	// emulated firmware, not what the tests check (that state survives a
	// reboot), so a guest whose serial console has been silent for
	// consoleStall during the reboot is reset once through libvirt, as an
	// operator would, and the reset is logged.
	const consoleStall = 3 * time.Minute
	serial := filepath.Join(g.h.StateDir, "log", "qemu", g.domain+"-serial.log")
	consoleSize := func() int64 {
		if fi, err := os.Stat(serial); err == nil {
			return fi.Size()
		}
		return -1
	}
	lastSize, lastGrowth, reset := consoleSize(), time.Now(), false
	for deadline := time.Now().Add(timeout); ; {
		code, _, err := g.exec(ctx, "/bin/test", "-e", marker)
		if err == nil && code != 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the guest %s did not reboot within %s\n%s", g.domain, timeout, guestConsole(g.h, g.domain))
		}
		if n := consoleSize(); n != lastSize {
			lastSize, lastGrowth = n, time.Now()
		} else if !reset && time.Since(lastGrowth) > consoleStall {
			reset = true
			out, rerr := exec.CommandContext(ctx, "virsh", "-c", g.h.LocalURI, "reset", g.domain).CombinedOutput()
			if g.logf != nil {
				g.logf("guest %s: console silent for %s during its reboot (firmware hang under TCG); reset through libvirt: %v %s",
					g.domain, consoleStall, rerr, strings.TrimSpace(string(out)))
			}
		}
		time.Sleep(2 * time.Second)
	}
}

// buildGuestTool builds the Go package pkg (e.g. "./internal/hostileguest")
// static for the guest, which has none of the host's libraries, and
// returns the binary (copy it in with guestAgent.writeFile).
func buildGuestTool(t *testing.T, pkg string) []byte {
	t.Helper()
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s for the guest: %v\n%s", pkg, err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
