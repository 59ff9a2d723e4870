package guestimage

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kdomanski/iso9660"

	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

// bootTimeout bounds one boot to cloud-init's final stage. Under TCG on a busy
// two-core machine the three boots share the CPUs; a boot alone takes about a
// minute.
const bootTimeout = 8 * time.Minute

const (
	ovmfCode       = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	ovmfVars       = "/usr/share/OVMF/OVMF_VARS_4M.fd"
	ovmfSecureCode = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
	ovmfSecureVars = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd" // Microsoft keys enrolled, Secure Boot on
)

// TestBoot boots the guest image under plain QEMU (TCG, so it runs the same on
// every machine) with BIOS, UEFI and UEFI Secure Boot, each from a NoCloud seed,
// and waits on the serial console for the line the seed's runcmd writes: it
// proves the boot loader, kernel, systemd and cloud-init all ran and consumed the
// seed (hostname from meta-data), and reports the firmware the guest saw. Then
// sshd must send its banner on a forwarded port and qemu-guest-agent must answer.
func TestBoot(t *testing.T) {
	realstack.Require(t, "qemu-system-x86_64", "qemu-img")
	// The parallel subtests run after this function returns: cancel at cleanup.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	t.Cleanup(cancel)
	start := time.Now()
	image, err := Path(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest image %s (ready after %s)", image, time.Since(start).Round(time.Second))
	if fi, err := os.Stat(image); err == nil {
		t.Logf("guest image size %d MiB", fi.Size()>>20)
	}

	for _, tc := range []struct {
		name     string
		firmware string // "bios", "efi"
		code     string
		vars     string
		secure   bool
	}{
		{name: "bios", firmware: "bios"},
		{name: "uefi", firmware: "efi", code: ovmfCode, vars: ovmfVars},
		{name: "secureboot", firmware: "efi", code: ovmfSecureCode, vars: ovmfSecureVars, secure: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for _, f := range []string{tc.code, tc.vars} {
				if _, err := os.Stat(f); f != "" && err != nil {
					realstack.Unavailable(t, "%s missing (scripts/install-deps.sh --guest-image installs ovmf)", f)
				}
			}
			dir := t.TempDir()
			disk := filepath.Join(dir, "disk.qcow2")
			if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2",
				"-b", image, "-F", "qcow2", disk).CombinedOutput(); err != nil {
				t.Fatalf("qemu-img create: %v\n%s", err, out)
			}
			host := "guest-" + tc.name
			sshPort := freePort(t)
			qgaSock := filepath.Join(dir, "qga.sock")
			seed := filepath.Join(dir, "seed.iso")
			writeSeed(t, seed, host)

			args := []string{
				"-accel", "tcg", "-m", "1024", "-smp", "1",
				"-nodefaults", "-display", "none", "-no-reboot",
				"-serial", "file:" + filepath.Join(dir, "console.log"),
				"-drive", "file=" + disk + ",if=virtio,format=qcow2",
				"-drive", "file=" + seed + ",if=virtio,format=raw,readonly=on",
				"-nic", fmt.Sprintf("user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:%d-:22", sshPort),
				"-device", "virtio-serial",
				"-chardev", "socket,id=qga0,server=on,wait=off,path=" + qgaSock,
				"-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
			}
			if tc.firmware == "efi" {
				vars := filepath.Join(dir, "vars.fd")
				copyFile(t, tc.vars, vars)
				machine := "q35"
				if tc.secure {
					machine += ",smm=on"
					args = append(args, "-global", "driver=cfi.pflash01,property=secure,value=on")
				}
				args = append(args, "-machine", machine,
					"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+tc.code,
					"-drive", "if=pflash,format=raw,unit=1,file="+vars)
			}
			qemu := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
			var qemuErr bytes.Buffer
			qemu.Stderr = &qemuErr
			bootStart := time.Now()
			if err := qemu.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- qemu.Wait() }()
			defer func() {
				_ = qemu.Process.Kill()
				<-exited
			}()

			want := fmt.Sprintf("KVM-GUEST-READY host=%s fw=%s", host, tc.firmware)
			if tc.secure {
				want += " sb=1"
			} else if tc.firmware == "efi" {
				want += " sb=0"
			}
			console := filepath.Join(dir, "console.log")
			deadline := time.After(bootTimeout)
			tick := time.NewTicker(500 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case err := <-exited:
					exited <- err
					t.Fatalf("QEMU exited before the guest was ready: %v\n%s\nconsole:\n%s", err, qemuErr.String(), consoleTail(console))
				case <-deadline:
					t.Fatalf("no %q on the serial console after %s; console:\n%s", want, bootTimeout, consoleTail(console))
				case <-tick.C:
				}
				log, _ := os.ReadFile(console)
				if line, ok := findLine(string(log), "KVM-GUEST-READY"); ok {
					if !strings.HasPrefix(line, want) {
						t.Fatalf("guest reported %q, want %q", line, want)
					}
					t.Logf("%s: boot to cloud-init runcmd in %s (TCG)", tc.name, time.Since(bootStart).Round(100*time.Millisecond))
					waitSSH(ctx, t, sshPort)
					t.Logf("%s: boot to SSH banner in %s (TCG)", tc.name, time.Since(bootStart).Round(100*time.Millisecond))
					waitAgent(ctx, t, qgaSock)
					t.Logf("%s: boot to guest agent in %s (TCG)", tc.name, time.Since(bootStart).Round(100*time.Millisecond))
					return
				}
			}
		})
	}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitSSH waits until the guest's sshd (forwarded to port) sends its banner:
// openssh-server runs, with the host keys cloud-init generated.
func waitSSH(ctx context.Context, t *testing.T, port int) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline) && ctx.Err() == nil; time.Sleep(time.Second) {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
		if err != nil {
			last = err.Error()
			continue
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		banner, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if strings.HasPrefix(banner, "SSH-2.0-") {
			return
		}
		last = fmt.Sprintf("read %q: %v", banner, err)
	}
	t.Fatalf("no SSH banner on the forwarded port %d: %s", port, last)
}

// waitAgent waits until qemu-guest-agent answers guest-sync on its virtio-serial
// channel.
func waitAgent(ctx context.Context, t *testing.T, sock string) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline) && ctx.Err() == nil; time.Sleep(time.Second) {
		c, err := net.DialTimeout("unix", sock, 5*time.Second)
		if err != nil {
			last = err.Error()
			continue
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = io.WriteString(c, `{"execute":"guest-sync","arguments":{"id":4711}}`+"\n")
		var reply string
		if err == nil {
			reply, err = bufio.NewReader(c).ReadString('\n')
		}
		c.Close()
		if strings.Contains(reply, `"return": 4711`) || strings.Contains(reply, `"return":4711`) {
			return
		}
		last = fmt.Sprintf("reply %q: %v", reply, err)
	}
	t.Fatalf("qemu-guest-agent did not answer on %s: %s", sock, last)
}

// writeSeed writes a NoCloud seed whose runcmd reports hostname, firmware and
// the Secure Boot state on the serial console.
func writeSeed(t *testing.T, path, host string) {
	t.Helper()
	const sbVar = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
	userData := `#cloud-config
runcmd:
  - - sh
    - -c
    - |
      fw=bios; sb=
      if [ -d /sys/firmware/efi ]; then fw=efi; sb=" sb=$(od -An -t u1 -j 4 -N 1 ` + sbVar + ` | tr -d ' ')"; fi
      echo "KVM-GUEST-READY host=$(hostname) fw=$fw$sb" >/dev/ttyS0
`
	metaData := fmt.Sprintf("instance-id: %s\nlocal-hostname: %s\n", host, host)
	w, err := iso9660.NewWriter()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.Cleanup() }()
	for name, body := range map[string]string{"user-data": userData, "meta-data": metaData} {
		if err := w.AddFile(strings.NewReader(body), name); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := w.WriteTo(f, "cidata"); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// findLine returns the first console line containing marker, from the marker on.
func findLine(log, marker string) (string, bool) {
	for _, line := range strings.Split(log, "\n") {
		if i := strings.Index(line, marker); i >= 0 {
			return strings.TrimRight(line[i:], "\r"), true
		}
	}
	return "", false
}

func consoleTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return tail(string(b), 40)
}
