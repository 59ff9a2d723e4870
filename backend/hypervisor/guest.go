package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"

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
// the guest reports them, without loopback. A domain whose agent channel
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
			out = addressesByMAC(ifs)
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

// addressesByMAC keeps the non-loopback addresses of interfaces with a MAC.
func addressesByMAC(ifs []libvirt.DomainInterface) map[string][]string {
	out := map[string][]string{}
	for _, ifc := range ifs {
		mac := strings.ToLower(ifc.Hwaddr)
		if mac == "" || mac == "00:00:00:00:00:00" {
			continue
		}
		for _, a := range ifc.Addrs {
			ip, err := netip.ParseAddr(a.Addr)
			if err != nil || ip.IsLoopback() {
				continue
			}
			out[mac] = append(out[mac], ip.String())
		}
	}
	return out
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
