package hypervisor

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"
)

// The startup probe. Domain capabilities are not enough to choose how this
// host runs guests: on a nested-virtualization host they offer kvm and every
// host CPU mode, yet QEMU aborts at start with host-passthrough (MSR 0x10a,
// IA32_ARCH_CAPABILITIES), and where KVM does start, a guest can run slower
// than under TCG. So the probe boots a 512-byte boot sector that writes a
// token to COM1, under each candidate, and keeps the fastest that printed it.

// CPUModeQEMU64 is the CPU mode of a domain without a <cpu> element: QEMU
// gives it its default model, qemu64, which runs everywhere.
const CPUModeQEMU64 = "qemu64"

// Domain types.
const (
	domainKVM  = "kvm"
	domainQEMU = "qemu"
	domainTest = "test"
)

const (
	// probeDeadline bounds how long a candidate's guest may take to print
	// its token once started.
	probeDeadline = 20 * time.Second
	// probeMemoryMiB is all SeaBIOS and a boot sector need.
	probeMemoryMiB  = 16
	probeNamePrefix = "kvm-hostd-probe-"
	// qemuLogDir is where the system libvirt keeps a log per domain; the
	// probe reads a crashed guest's reason there and removes its own logs.
	qemuLogDir = "/var/log/libvirt/qemu"
)

// probeCandidate is one way of running guests.
type probeCandidate struct {
	DomainType string   // kvm or qemu
	CPUMode    string   // host-passthrough, or CPUModeQEMU64 (no <cpu> element)
	Disable    []string // CPU features to disable
}

func (c probeCandidate) String() string {
	s := c.DomainType + " with " + c.CPUMode
	if len(c.Disable) > 0 {
		s += " (" + strings.Join(c.Disable, ", ") + " disabled)"
	}
	return s
}

// probeRun is what booting one candidate's guest showed.
type probeRun struct {
	Name        string        // of the throwaway domain (and its directory)
	Ran         bool          // the guest printed the token in time
	Started     bool          // QEMU started and stayed up
	StartFailed bool          // QEMU did not start (or died before printing)
	Start       time.Duration // define and start of the domain
	Run         time.Duration // from start to the token (or to giving up)
	Err         string        // why it did not run
}

// guestBooter boots the probe guest under a candidate. The real one drives
// libvirt; tests fake the kinds of host they cannot be.
type guestBooter interface {
	Boot(ctx context.Context, c probeCandidate, deadline time.Duration) probeRun
}

// kvmFacts is what the host says about KVM before anything is booted.
type kvmFacts struct {
	DevKVM   bool   // /dev/kvm exists
	CapsKVM  bool   // libvirt's capabilities offer domain type kvm
	Usable   bool   // QEMU (user libvirt-qemu) may open /dev/kvm
	Unusable string // why not, when DevKVM && !Usable
}

// ProbeAttempt is one candidate the probe booted.
type ProbeAttempt struct {
	Name       string // of the throwaway domain
	DomainType string
	CPUMode    string
	Disable    []string
	Ran        bool // the guest printed the token in time
	Started    bool // QEMU started and stayed up
	Start      time.Duration
	Run        time.Duration
	Err        string
}

func (a ProbeAttempt) String() string {
	s := fmt.Sprintf("%s: ran=%v start=%s run=%s", probeCandidate{a.DomainType, a.CPUMode, a.Disable},
		a.Ran, a.Start.Round(time.Millisecond), a.Run.Round(time.Millisecond))
	if a.Err != "" {
		s += " error=" + shortErr(a.Err)
	}
	return s
}

// HostProbe is what the startup probe found this host can run.
type HostProbe struct {
	// DomainType is kvm or qemu (TCG); test on libvirt's test driver.
	DomainType string
	// CPUMode is the mode of VMs that name none: host-passthrough, or
	// CPUModeQEMU64 (no <cpu> element); empty on the test driver.
	CPUMode string
	// Disable lists the CPU features CPUMode needs disabled.
	Disable []string
	// Reason says, for people, why this was chosen.
	Reason   string
	Attempts []ProbeAttempt
	Took     time.Duration
}

// disabledFor returns the features the probe found must be disabled for
// mode to start under domain type typ. Only a combination the probe saw
// start gets them: a fix is not applied on a guess.
func (p *HostProbe) disabledFor(typ, mode string) []string {
	if p == nil {
		return nil
	}
	for _, a := range p.Attempts {
		if a.Started && a.DomainType == typ && a.CPUMode == mode && len(a.Disable) > 0 {
			return a.Disable
		}
	}
	return nil
}

// defaultCPU gives the CPU mode and disabled features of a VM of domain type
// typ that names no mode: the probed default on the probed type; otherwise
// (a domain defined before, under another type) what that type always had.
func (p *HostProbe) defaultCPU(typ string) (string, []string) {
	if p != nil && p.DomainType == typ && p.CPUMode != "" {
		return p.CPUMode, p.Disable
	}
	if typ == domainKVM {
		return "host-passthrough", p.disabledFor(typ, "host-passthrough")
	}
	return CPUModeQEMU64, nil
}

// msrCrash matches QEMU's abort on hosts whose KVM refuses the
// IA32_ARCH_CAPABILITIES MSR (nested virtualization).
var msrCrash = regexp.MustCompile(`(?i)failed to set MSR 0x10a|kvm_buf_set_msrs|arch.capabilities`)

// kvmPermission matches QEMU's failure to open a root-only /dev/kvm.
var kvmPermission = regexp.MustCompile(`(?i)(/dev/kvm|KVM kernel module).*(permission denied|operation not permitted)`)

// probeHost picks the domain type and default CPU mode. TCG runs first: it
// works wherever QEMU does, and its time bounds how long a KVM candidate is
// worth waiting for (a KVM slower than TCG is not used anyway).
func probeHost(ctx context.Context, facts kvmFacts, b guestBooter) *HostProbe {
	t0 := time.Now()
	p := &HostProbe{}
	try := func(c probeCandidate, deadline time.Duration) (ProbeAttempt, probeRun) {
		r := b.Boot(ctx, c, deadline)
		a := ProbeAttempt{Name: r.Name, DomainType: c.DomainType, CPUMode: c.CPUMode, Disable: c.Disable,
			Ran: r.Ran, Started: r.Started, Start: r.Start, Run: r.Run, Err: r.Err}
		p.Attempts = append(p.Attempts, a)
		return a, r
	}

	tcg, _ := try(probeCandidate{DomainType: domainQEMU, CPUMode: CPUModeQEMU64}, probeDeadline)
	kvmDeadline := probeDeadline
	if tcg.Ran {
		// Long enough to see KVM beat TCG with room for noise, short
		// enough that a KVM that barely runs does not stall startup.
		kvmDeadline = min(probeDeadline, 2*tcg.Run+time.Second)
	}

	var kvmWhy string // why KVM is not used
	var kvmWin *ProbeAttempt
	var notes []string
	switch {
	case !facts.DevKVM:
		kvmWhy = "no /dev/kvm"
	case !facts.CapsKVM:
		kvmWhy = "libvirt's capabilities offer no kvm domain type"
	case !facts.Usable:
		kvmWhy = facts.Unusable
	default:
		var fails []string
		pass := probeCandidate{DomainType: domainKVM, CPUMode: "host-passthrough"}
		a, r := try(pass, kvmDeadline)
		if a.Ran {
			kvmWin = &a
		} else {
			fails = append(fails, fmt.Sprintf("%s: %s", pass, shortErr(a.Err)))
			if r.StartFailed && msrCrash.MatchString(a.Err) {
				fixed := pass
				fixed.Disable = []string{"arch-capabilities"}
				if a2, _ := try(fixed, kvmDeadline); a2.Ran {
					kvmWin = &a2
					notes = append(notes, fmt.Sprintf("%s crashes QEMU (%s); with arch-capabilities disabled it runs", pass, shortErr(a.Err)))
				} else {
					fails = append(fails, fmt.Sprintf("%s: %s", fixed, shortErr(a2.Err)))
				}
			}
		}
		if kvmWin == nil {
			plain := probeCandidate{DomainType: domainKVM, CPUMode: CPUModeQEMU64}
			if a3, _ := try(plain, kvmDeadline); a3.Ran {
				kvmWin = &a3
				notes = append(notes, fmt.Sprintf("%s did not run (%s)", pass, shortErr(a.Err)))
			} else {
				fails = append(fails, fmt.Sprintf("%s: %s", plain, shortErr(a3.Err)))
			}
		}
		if kvmWin == nil {
			kvmWhy = "KVM did not run the probe guest: " + strings.Join(fails, "; ")
			for _, f := range fails {
				if kvmPermission.MatchString(f) {
					kvmWhy = "QEMU may not open /dev/kvm (permissions; Debian's udev rule makes it root:kvm 0660): " + strings.Join(fails, "; ")
					break
				}
			}
		}
	}

	switch {
	case kvmWin != nil && tcg.Ran && kvmWin.Run > tcg.Run:
		p.DomainType, p.CPUMode = domainQEMU, CPUModeQEMU64
		notes = append(notes, fmt.Sprintf("KVM (%s) ran the probe guest in %s, slower than TCG in %s: using TCG",
			kvmWin.CPUMode, roundDur(kvmWin.Run), roundDur(tcg.Run)))
	case kvmWin != nil:
		p.DomainType, p.CPUMode, p.Disable = domainKVM, kvmWin.CPUMode, kvmWin.Disable
		tcgTook := "TCG did not run it: " + shortErr(tcg.Err)
		if tcg.Ran {
			tcgTook = "TCG in " + roundDur(tcg.Run).String()
		}
		notes = append(notes, fmt.Sprintf("KVM (%s) ran the probe guest in %s, %s: using KVM", kvmWin.CPUMode, roundDur(kvmWin.Run), tcgTook))
	case tcg.Ran:
		p.DomainType, p.CPUMode = domainQEMU, CPUModeQEMU64
		notes = append(notes, fmt.Sprintf("%s; TCG ran the probe guest in %s: using TCG", kvmWhy, roundDur(tcg.Run)))
	default:
		// Nothing ran: QEMU or libvirt is broken here. VMs will fail to
		// start and say so; TCG with qemu64 is the guess that needs least.
		p.DomainType, p.CPUMode = domainQEMU, CPUModeQEMU64
		notes = append(notes, fmt.Sprintf("no candidate ran the probe guest (TCG: %s; KVM: %s): assuming TCG", shortErr(tcg.Err), kvmWhy))
	}
	p.Reason = strings.Join(notes, "; ")
	p.Took = time.Since(t0)
	return p
}

func roundDur(d time.Duration) time.Duration { return d.Round(10 * time.Millisecond) }

var msrLine = regexp.MustCompile(`failed to set MSR 0x10a( to 0x[0-9a-f]+)?`)

// shortErr keeps, on one line, the part of a QEMU error that says what
// went wrong.
func shortErr(s string) string {
	if m := msrLine.FindString(s); m != "" {
		return m
	}
	lines := strings.Split(strings.TrimSpace(s), "\n")
	line := lines[0]
	for _, l := range lines {
		if kvmPermission.MatchString(l) {
			line = l
			break
		}
	}
	if len(line) > 200 {
		line = line[:200] + "…"
	}
	return line
}

// hostKVMFacts reads /dev/kvm and libvirt's capabilities.
func hostKVMFacts(c *libvirt.Connect) (kvmFacts, error) {
	var f kvmFacts
	st, err := os.Stat("/dev/kvm")
	if err != nil {
		return f, nil
	}
	f.DevKVM = true
	caps, err := c.GetCapabilities()
	if err != nil {
		return f, fmt.Errorf("libvirt capabilities: %w", err)
	}
	var x libvirtxml.Caps
	if err := x.Unmarshal(caps); err != nil {
		return f, fmt.Errorf("parse libvirt capabilities: %w", err)
	}
	for _, g := range x.Guests {
		for _, d := range g.Arch.Domains {
			if g.OSType == "hvm" && g.Arch.Name == "x86_64" && d.Type == domainKVM {
				f.CapsKVM = true
			}
		}
	}
	f.Usable, f.Unusable = kvmUsableByQEMU(st)
	return f, nil
}

// kvmUsableByQEMU reports whether QEMU, which runs as libvirt-qemu (group
// kvm on Debian), can open /dev/kvm: a root-only 0600 node exists on some
// machines, and starting a kvm domain there only fails.
func kvmUsableByQEMU(st os.FileInfo) (bool, string) {
	mode := st.Mode().Perm()
	if mode&0o006 == 0o006 {
		return true, ""
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return false, "cannot read the owner of /dev/kvm"
	}
	owner, group := strconv.Itoa(int(sys.Uid)), strconv.Itoa(int(sys.Gid))
	if u, err := user.LookupId(owner); err == nil {
		owner = u.Username
	}
	g, err := user.LookupGroupId(group)
	if err == nil {
		group = g.Name
	}
	if mode&0o060 == 0o060 && group == "kvm" {
		return true, ""
	}
	return false, fmt.Sprintf("/dev/kvm is %s %s:%s, which QEMU (user libvirt-qemu, group kvm) may not open "+
		"(Debian's udev rule makes it root:kvm 0660)", fmt.Sprintf("%04o", mode), owner, group)
}

// bootSector returns a 512-byte MBR: real-mode code that writes token and a
// newline to COM1 (0x3f8) and halts. SeaBIOS loads it at 0000:7c00.
func bootSector(token string) []byte {
	const org = 0x7c00
	code := []byte{
		0xfa,       // cli
		0x31, 0xc0, // xor ax, ax
		0x8e, 0xd8, // mov ds, ax
		0xfc,             // cld
		0xba, 0xf8, 0x03, // mov dx, 0x3f8
		0xbe, 0, 0, // mov si, msg (patched below)
	}
	loop := len(code)
	code = append(code,
		0xac,       // loop: lodsb
		0x84, 0xc0, // test al, al
		0x74, 0, // jz done (patched)
		0xee,    // out dx, al
		0xeb, 0, // jmp loop (patched)
	)
	done := len(code)
	code[loop+4] = byte(done - (loop + 5))
	code[done-1] = byte(loop - done)
	code = append(code,
		0xf4,       // done: hlt
		0xeb, 0xfd, // jmp done
	)
	msg := org + len(code)
	code[10], code[11] = byte(msg), byte(msg>>8)
	code = append(code, token...)
	code = append(code, '\r', '\n', 0)
	sector := make([]byte, 512)
	copy(sector, code)
	sector[510], sector[511] = 0x55, 0xaa
	return sector
}

// writeBootImage writes the boot sector as a raw disk. SeaBIOS does not
// boot a virtio disk of one sector ("could not read the boot disk"); 1 MiB,
// sparse, it does.
func writeBootImage(path, token string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(bootSector(token))
	if err == nil {
		err = f.Truncate(1 << 20)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// libvirtBooter boots the probe guest as a transient domain on c.
type libvirtBooter struct {
	c *libvirt.Connect
	// logDir holds libvirt's per-domain QEMU logs on this machine, or ""
	// when libvirt is remote.
	logDir string
}

func (b *libvirtBooter) Boot(ctx context.Context, cand probeCandidate, deadline time.Duration) (r probeRun) {
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	name := probeNamePrefix + hex.EncodeToString(rnd[:])
	token := "kvm-hostd probe " + hex.EncodeToString(rnd[:]) + " ok"
	r.Name = name
	fail := func(start bool, format string, args ...any) probeRun {
		r.StartFailed, r.Err = start, fmt.Sprintf(format, args...)
		return r
	}

	// Named like the domain, so whatever is left of a probe is
	// recognisable. QEMU runs as libvirt-qemu: the directory must be
	// traversable (a MkdirTemp directory is 0700).
	dir := filepath.Join(os.TempDir(), name)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fail(false, "temp dir: %v", err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		return fail(false, "temp dir: %v", err)
	}
	img, serial := filepath.Join(dir, "boot.img"), filepath.Join(dir, "serial.log")
	if err := writeBootImage(img, token); err != nil {
		return fail(false, "boot image: %v", err)
	}
	if b.logDir != "" {
		// libvirt keeps a log per domain name; ours are throwaway.
		defer os.Remove(filepath.Join(b.logDir, name+".log"))
	}

	doc, err := probeDomain(name, cand, img, serial).Marshal()
	if err != nil {
		return fail(false, "domain XML: %v", err)
	}
	t0 := time.Now()
	// Transient and auto-destroyed with the connection: if kvm-hostd dies
	// mid-probe, libvirt removes the domain itself.
	d, err := b.c.DomainCreateXML(doc, libvirt.DOMAIN_START_AUTODESTROY)
	r.Start = time.Since(t0)
	if err != nil {
		return fail(true, "%s", libvirtMessage(err))
	}
	r.Started = true
	defer func() {
		if err := d.Destroy(); err != nil && !isCode(err, libvirt.ERR_NO_DOMAIN, libvirt.ERR_OPERATION_INVALID) {
			r.Err += fmt.Sprintf(" (destroy %s: %v)", name, err)
		}
		_ = d.Free()
	}()

	t1 := time.Now()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(deadline)
	for n := 0; ; n++ {
		if out, _ := os.ReadFile(serial); bytes.Contains(out, []byte(token)) {
			r.Ran, r.Run = true, time.Since(t1)
			return r
		}
		if n%10 == 0 {
			if active, err := d.IsActive(); err != nil || !active {
				r.Run, r.Started = time.Since(t1), false
				return fail(true, "QEMU exited before the guest printed anything%s", b.qemuLogTail(name))
			}
		}
		select {
		case <-ctx.Done():
			r.Run = time.Since(t1)
			return fail(false, "%v", ctx.Err())
		case <-timeout:
			r.Run = time.Since(t1)
			return fail(false, "the guest printed nothing in %s", deadline)
		case <-tick.C:
		}
	}
}

// probeDomain is the throwaway guest: the boot sector as its only disk, a
// serial port written to a file, nothing else.
func probeDomain(name string, c probeCandidate, img, serial string) *libvirtxml.Domain {
	port := uint(0)
	x := &libvirtxml.Domain{
		Type:   c.DomainType,
		Name:   name,
		Memory: &libvirtxml.DomainMemory{Value: probeMemoryMiB, Unit: "MiB"},
		VCPU:   &libvirtxml.DomainVCPU{Value: 1},
		OS: &libvirtxml.DomainOS{
			Type:        &libvirtxml.DomainOSType{Type: "hvm", Arch: "x86_64"},
			BootDevices: []libvirtxml.DomainBootDevice{{Dev: "hd"}},
		},
		OnPoweroff: "destroy",
		OnReboot:   "destroy",
		OnCrash:    "destroy",
		Devices: &libvirtxml.DomainDeviceList{
			Disks: []libvirtxml.DomainDisk{{
				Device:   "disk",
				Driver:   &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "raw"},
				Source:   &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: img}},
				Target:   &libvirtxml.DomainDiskTarget{Dev: "vda", Bus: "virtio"},
				ReadOnly: &libvirtxml.DomainDiskReadOnly{},
			}},
			Serials: []libvirtxml.DomainSerial{{
				Source: &libvirtxml.DomainChardevSource{File: &libvirtxml.DomainChardevSourceFile{Path: serial}},
				Target: &libvirtxml.DomainSerialTarget{Port: &port},
			}},
			MemBalloon: &libvirtxml.DomainMemBalloon{Model: "none"},
		},
	}
	if c.CPUMode != CPUModeQEMU64 {
		x.CPU = &libvirtxml.DomainCPU{Mode: c.CPUMode}
		if c.CPUMode == "host-passthrough" {
			x.CPU.Check = "none"
		}
		for _, f := range c.Disable {
			x.CPU.Features = append(x.CPU.Features, libvirtxml.DomainCPUFeature{Policy: "disable", Name: f})
		}
	}
	return x
}

// qemuLogTail returns the last lines of libvirt's log of a domain, where
// QEMU writes why it aborted.
func (b *libvirtBooter) qemuLogTail(name string) string {
	if b.logDir == "" {
		return ""
	}
	out, err := os.ReadFile(filepath.Join(b.logDir, name+".log"))
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	lines = slices.DeleteFunc(lines, func(s string) bool { return strings.TrimSpace(s) == "" })
	if len(lines) > 3 {
		lines = lines[len(lines)-3:]
	}
	return ": " + strings.Join(lines, " | ")
}

func libvirtMessage(err error) string {
	var e libvirt.Error
	if errors.As(err, &e) {
		return e.Message
	}
	return err.Error()
}
