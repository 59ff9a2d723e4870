package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// agentResponseTimeout bounds every qemu-guest-agent command libvirt sends
// to a domain whose addresses kvm-hostd asks for (seconds; libvirt's own
// default is to wait forever once the agent answered guest-sync).
const agentResponseTimeout = 2

// GuestAddresses asks a running domain's qemu-guest-agent for the
// addresses of its NICs, by lower-case MAC: IPv4 and IPv6 in the order
// the guest reports them, without loopback or zones, within the bounds of
// addressesByMAC. What is left is still the guest's claim: the service
// checks it against the host's networks before reporting it. A domain whose agent channel
// is not connected (no agent, guest not booted yet) answers nil at once,
// from the live XML alone. The call returns when ctx ends even if libvirt
// still waits for the agent.
func (l *Libvirt) GuestAddresses(ctx context.Context, name string) (map[string][]string, error) {
	if l.test {
		return nil, nil // the test driver runs no guest and no agent
	}
	type result struct {
		m   map[string][]string
		err error
	}
	done := make(chan result, 1)
	go func() {
		var out map[string][]string
		err := l.withDomain(context.WithoutCancel(ctx), name, func(_ *libvirt.Connect, d *libvirt.Domain) error {
			live, err := domXML(d, 0)
			if err != nil {
				return err
			}
			if !agentConnected(live) {
				return nil
			}
			_ = d.AgentSetResponseTimeout(agentResponseTimeout, 0)
			ifs, err := d.ListAllInterfaceAddresses(libvirt.DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT)
			if err != nil {
				return err
			}
			var dIfs, dAddrs int
			out, dIfs, dAddrs = addressesByMAC(ifs)
			if (dIfs > 0 || dAddrs > 0) && agentDropLog.ok() {
				l.log.Warn("guest agent reported more interfaces or addresses than are looked at; the rest is ignored (logged at most once a minute)",
					"vm", name, "dropped_interfaces", dIfs, "dropped_addresses", dAddrs,
					"max_interfaces", maxAgentInterfaces, "max_addresses_per_nic", maxAgentAddrsPerMAC)
			}
			return nil
		})
		done <- result{out, err}
	}()
	select {
	case r := <-done:
		return r.m, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Bounds on what one agent answer may contribute. The guest is not
// trusted: it can report any number of interfaces and addresses, of any
// length. These make the first pass cheap; kvm-hostd's service layer
// filters the result again against the host's networks.
const (
	maxAgentInterfaces   = 64 // interfaces of one answer looked at
	maxAgentAddrsPerMAC  = 64 // addresses kept per MAC
	maxAgentAddrsScanned = 4 * maxAgentAddrsPerMAC
	// maxAgentAddrText is longer than any IP without a zone (45 bytes).
	maxAgentAddrText = 64
	maxAgentMACText  = 32
)

// agentDropLog says at most once a minute that an agent answer was cut.
var agentDropLog = newLogEvery(time.Minute)

// addressesByMAC keeps the non-loopback, zone-less addresses of interfaces
// with a MAC, keyed by the MAC in canonical lower-case form, within the
// bounds above. Only parsed addresses leave it (never the guest's text);
// it reports how many interfaces and addresses were dropped by the caps.
func addressesByMAC(ifs []libvirt.DomainInterface) (out map[string][]string, droppedIfs, droppedAddrs int) {
	out = map[string][]string{}
	if len(ifs) > maxAgentInterfaces {
		droppedIfs = len(ifs) - maxAgentInterfaces
		ifs = ifs[:maxAgentInterfaces]
	}
	for _, ifc := range ifs {
		if len(ifc.Hwaddr) > maxAgentMACText {
			continue
		}
		hw, err := net.ParseMAC(ifc.Hwaddr)
		if err != nil || len(hw) != 6 || hw.String() == "00:00:00:00:00:00" {
			continue
		}
		mac := hw.String()
		addrs := ifc.Addrs
		if len(addrs) > maxAgentAddrsScanned {
			droppedAddrs += len(addrs) - maxAgentAddrsScanned
			addrs = addrs[:maxAgentAddrsScanned]
		}
		for _, a := range addrs {
			if len(a.Addr) > maxAgentAddrText {
				continue
			}
			ip, err := netip.ParseAddr(a.Addr)
			if err != nil || ip.Zone() != "" || ip.IsLoopback() {
				continue
			}
			if len(out[mac]) == maxAgentAddrsPerMAC {
				droppedAddrs++
				continue
			}
			out[mac] = append(out[mac], ip.String())
		}
	}
	return out, droppedIfs, droppedAddrs
}

// serialLogPath is where virtlogd keeps the serial output of a domain.
func serialLogPath(name string) string { return filepath.Join(qemuLogDir, name+"-serial.log") }

// serialLog is the serial port's log (virtlogd writes it; it rotates it at
// its max_size and keeps it across restarts of the domain).
func serialLog(name string) *libvirtxml.DomainChardevLog {
	return &libvirtxml.DomainChardevLog{File: serialLogPath(name), Append: "on"}
}

// ConsoleLog returns the last max bytes of the domain's serial log and
// whether older output was cut off. A domain without a serial log (the
// test driver, domains defined before the log existed, a guest that wrote
// nothing yet) has an empty one. Only a regular file inside libvirt's QEMU
// log directory is read, never through a symlink.
func (l *Libvirt) ConsoleLog(ctx context.Context, name string, max int64) ([]byte, bool, error) {
	var path string
	err := l.withDomain(ctx, name, func(_ *libvirt.Connect, d *libvirt.Domain) error {
		x, err := domXML(d, libvirt.DOMAIN_XML_INACTIVE)
		if err != nil {
			return err
		}
		if x.Devices != nil {
			for _, s := range x.Devices.Serials {
				if s.Log != nil && s.Log.File != "" {
					path = s.Log.File
					break
				}
			}
		}
		return nil
	})
	if err != nil || path == "" || l.test {
		return nil, false, err
	}
	return tailFile(qemuLogDir, path, max)
}

// tailFile reads the last max bytes of path, which must name a regular
// file directly inside dir; a missing file is empty.
func tailFile(dir, path string, max int64) ([]byte, bool, error) {
	if filepath.Dir(filepath.Clean(path)) != filepath.Clean(dir) {
		return nil, false, api.Errorf(api.CodeConflict, "serial log %s is outside %s; not read", path, dir)
	}
	// The directory itself must not be a symlink out either.
	if fi, err := os.Lstat(dir); err != nil || fi.Mode()&os.ModeSymlink != 0 {
		return nil, false, nil
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, false, nil
		}
		if errors.Is(err, syscall.ELOOP) {
			return nil, false, api.Errorf(api.CodeConflict, "serial log %s is a symlink; not read", path)
		}
		return nil, false, fmt.Errorf("open serial log: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, false, err
	}
	if !fi.Mode().IsRegular() {
		return nil, false, api.Errorf(api.CodeConflict, "serial log %s is not a regular file; not read", path)
	}
	off := int64(0)
	if fi.Size() > max {
		off = fi.Size() - max
	}
	b, err := io.ReadAll(io.LimitReader(io.NewSectionReader(f, off, max), max))
	if err != nil {
		return nil, false, err
	}
	return b, off > 0, nil
}

// logEvery lets a log line through at most once per interval, so a guest
// that keeps sending oversized answers cannot flood kvm-hostd's log.
type logEvery struct {
	mu    sync.Mutex
	every time.Duration
	last  time.Time
}

func newLogEvery(d time.Duration) *logEvery { return &logEvery{every: d} }

func (e *logEvery) ok() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if now := time.Now(); e.last.IsZero() || now.Sub(e.last) >= e.every {
		e.last = now
		return true
	}
	return false
}
