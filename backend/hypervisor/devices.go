package hypervisor

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// The devices of a complete VM: its console, the virtio-rng, per-disk
// cache/io/discard, the virtio-scsi controller's I/O thread and NIC
// multiqueue. buildDomain renders them (buildDevices), specOf reads them
// back (devicesOf), vmOf adds what only the live domain knows (the console
// port) and mergeDomain carries them onto a redefined domain (mergeDevices).

// scsiIOThread is the I/O thread of the virtio-scsi controller: its
// requests run off QEMU's main loop (which also runs the vCPUs under TCG
// and the monitor), so disk I/O does not stall the guest and vice versa.
const scsiIOThread = 1

// rngSource is what feeds the guest's virtio-rng: the host's non-blocking
// pool, so a guest draining entropy cannot stall the host or other guests.
const rngSource = "/dev/urandom"

// buildDevices renders spec's console, RNG, disk modes and NIC queues into
// x, whose first len(disks) disks and interfaces buildDomain made from the
// spec in order.
func buildDevices(spec *api.VMSpec, disks []resolvedDisk, x *libvirtxml.Domain) error {
	scsi := false
	for i, d := range disks {
		dd := &x.Devices.Disks[i]
		dd.Driver.Cache = orDefault(d.Cache, api.DefaultDiskCache)
		dd.Driver.IO = d.IO
		dd.Driver.Discard = orDefault(d.Discard, api.DefaultDiskDiscard)
		if err := api.CheckDiskIO(dd.Driver.Cache, dd.Driver.IO); err != nil {
			return api.Errorf(api.CodeInvalid, "disks[%d]: %s", i, err)
		}
		if d.Bus == "scsi" {
			scsi = true
		}
	}
	if scsi {
		x.IOThreads = scsiIOThread
		for i := range x.Devices.Controllers {
			if c := &x.Devices.Controllers[i]; c.Type == "scsi" {
				c.Driver = &libvirtxml.DomainControllerDriver{IOThread: scsiIOThread}
			}
		}
	}
	for i := range spec.Interfaces {
		q := spec.Interfaces[i].Queues
		if q <= 1 {
			continue
		}
		ix := &x.Devices.Interfaces[i]
		if ix.Model == nil || ix.Model.Type != "virtio" {
			return api.Errorf(api.CodeInvalid, "network_interfaces[%d]: queues = %d needs model virtio", i, q)
		}
		if ix.Driver == nil {
			ix.Driver = &libvirtxml.DomainInterfaceDriver{}
		}
		ix.Driver.Queues = uint(q)
	}
	if spec.RNGEnabled() {
		x.Devices.RNGs = []libvirtxml.DomainRNG{{Model: "virtio",
			Backend: &libvirtxml.DomainRNGBackend{Random: &libvirtxml.DomainRNGBackendRandom{Device: rngSource}}}}
	}
	if g := spec.Graphics; g != nil {
		gx, err := graphicsXML(g)
		if err != nil {
			return err
		}
		x.Devices.Graphics = []libvirtxml.DomainGraphic{gx}
	}
	return nil
}

// graphicsXML is a console with a port libvirt picks (autoport) on the
// given address. The password goes into the definition; libvirt shows it
// only in the secure XML (VIR_DOMAIN_XML_SECURE), never to read-only
// connections or in our read-back.
func graphicsXML(g *api.Graphics) (libvirtxml.DomainGraphic, error) {
	listen := orDefault(g.Listen, api.DefaultGraphicsListen)
	if err := api.CheckGraphicsListen(listen); err != nil {
		return libvirtxml.DomainGraphic{}, api.Errorf(api.CodeInvalid, "%s", err)
	}
	ls := []libvirtxml.DomainGraphicListener{{Address: &libvirtxml.DomainGraphicListenerAddress{Address: listen}}}
	switch g.Type {
	case "vnc":
		return libvirtxml.DomainGraphic{VNC: &libvirtxml.DomainGraphicVNC{AutoPort: "yes", Listen: listen, Listeners: ls, Passwd: g.Password}}, nil
	case "spice":
		return libvirtxml.DomainGraphic{Spice: &libvirtxml.DomainGraphicSpice{AutoPort: "yes", Listen: listen, Listeners: ls, Passwd: g.Password}}, nil
	}
	return libvirtxml.DomainGraphic{}, api.Errorf(api.CodeInvalid, "graphics.type %q is not one of vnc, spice", g.Type)
}

// graphicsOf reads the first VNC or SPICE console of a domain back: type,
// listen address and port (-1 until libvirt assigned one, i.e. while the
// domain is not running). The password is never read back.
func graphicsOf(x *libvirtxml.Domain) *api.Graphics {
	if x.Devices == nil {
		return nil
	}
	for _, g := range x.Devices.Graphics {
		var typ, listen string
		var port int
		var ls []libvirtxml.DomainGraphicListener
		switch {
		case g.VNC != nil:
			typ, listen, port, ls = "vnc", g.VNC.Listen, g.VNC.Port, g.VNC.Listeners
		case g.Spice != nil:
			typ, listen, port, ls = "spice", g.Spice.Listen, g.Spice.Port, g.Spice.Listeners
		default:
			continue
		}
		for _, l := range ls {
			if l.Address != nil && l.Address.Address != "" {
				listen = l.Address.Address
				break
			}
		}
		if port <= 0 {
			port = -1
		}
		return &api.Graphics{Type: typ, Listen: listen, Port: int64(port)}
	}
	return nil
}

// devicesOf reads back what buildDevices wrote: disk modes (exactly: a
// disk defined without a cache mode runs QEMU's default, writeback, and
// reads so; without a discard mode it ignores discards), NIC queues, the
// RNG and the console as the definition has it.
func devicesOf(x *libvirtxml.Domain, s *api.VMSpec) {
	for i, d := range diskList(x) {
		if i >= len(s.Disks) {
			break
		}
		vd := &s.Disks[i]
		var drv libvirtxml.DomainDiskDriver
		if d.Driver != nil {
			drv = *d.Driver
		}
		vd.Cache = unsetOr(drv.Cache, "writeback")
		vd.IO = unsetOr(drv.IO, "")
		vd.Discard = unsetOr(drv.Discard, "ignore")
	}
	if x.Devices != nil {
		for i, ix := range x.Devices.Interfaces {
			if i < len(s.Interfaces) && ix.Driver != nil && ix.Driver.Queues > 1 {
				s.Interfaces[i].Queues = int64(ix.Driver.Queues)
			}
		}
	}
	rng := hasRNG(x)
	s.RNG = &rng
	s.Graphics = graphicsOf(x)
}

// liveDevicesOf adds what only a running domain knows: the console's port.
func liveDevicesOf(live *libvirtxml.Domain, s *api.VMSpec) {
	if s.Graphics == nil {
		return
	}
	if g := graphicsOf(live); g != nil && g.Type == s.Graphics.Type {
		s.Graphics.Port = g.Port
	}
}

// hasRNG reports whether the domain has a virtio-rng device.
func hasRNG(x *libvirtxml.Domain) bool {
	if x.Devices == nil {
		return false
	}
	for _, r := range x.Devices.RNGs {
		if strings.HasPrefix(r.Model, "virtio") {
			return true
		}
	}
	return false
}

// mergeDevices carries want's console, RNG and I/O thread onto dev, the
// devices of a domain being redefined from cur: the console and RNG are
// ours entirely; the virtio-scsi controller libvirt completed stays, with
// the I/O thread attached or detached as want says.
func mergeDevices(n *libvirtxml.Domain, dev *libvirtxml.DomainDeviceList, want *libvirtxml.Domain) {
	n.IOThreads = want.IOThreads
	dev.Graphics = want.Devices.Graphics
	if len(dev.Graphics) == 0 {
		// A console needs a video device; one libvirt added for it goes
		// with it (the serial console is the VM's console then).
		dev.Videos = nil
	}
	dev.RNGs = want.Devices.RNGs
	for i := range dev.Controllers {
		c := &dev.Controllers[i]
		if c.Type != "scsi" {
			continue
		}
		if want.IOThreads > 0 {
			if c.Driver == nil {
				c.Driver = &libvirtxml.DomainControllerDriver{}
			}
			c.Driver.IOThread = scsiIOThread
		} else if c.Driver != nil {
			c.Driver.IOThread = 0
		}
	}
}

// applyGraphicsPassword sets want's console password where it differs
// from the domain's (read from its secure XML): a password rotation is
// applied live, without the restart other console changes take.
func (l *Libvirt) applyGraphicsPassword(c *libvirt.Connect, d *libvirt.Domain, active bool, want *libvirtxml.Domain) error {
	if len(want.Devices.Graphics) == 0 {
		return nil
	}
	secure, err := domXML(d, libvirt.DOMAIN_XML_INACTIVE|libvirt.DOMAIN_XML_SECURE)
	if err != nil {
		return wrap(err, "read domain")
	}
	if graphicsPasswd(secure) == graphicsPasswd(want) {
		return nil
	}
	return l.setGraphicsPassword(c, d, active, secure, want)
}

func graphicsPasswd(x *libvirtxml.Domain) string {
	if x == nil || x.Devices == nil {
		return ""
	}
	for _, g := range x.Devices.Graphics {
		switch {
		case g.VNC != nil:
			return g.VNC.Passwd
		case g.Spice != nil:
			return g.Spice.Passwd
		}
	}
	return ""
}

// setGraphicsPassword changes the console password without a restart:
// libvirt updates the running console and the definition in one call.
// The test driver cannot update devices, so there the definition is
// rewritten (the same outcome for a domain that runs nothing).
func (l *Libvirt) setGraphicsPassword(c *libvirt.Connect, d *libvirt.Domain, active bool, cur, want *libvirtxml.Domain) error {
	if l.test || !active {
		if cur.Devices == nil || len(cur.Devices.Graphics) == 0 {
			return nil
		}
		cur.Devices.Graphics[0] = want.Devices.Graphics[0]
		doc, err := cur.Marshal()
		if err != nil {
			return err
		}
		nd, err := c.DomainDefineXML(doc)
		if err != nil {
			return wrap(err, "set console password")
		}
		nd.Free()
		return nil
	}
	doc, err := want.Devices.Graphics[0].Marshal()
	if err != nil {
		return err
	}
	if err := d.UpdateDeviceFlags(doc, libvirt.DOMAIN_DEVICE_MODIFY_LIVE|libvirt.DOMAIN_DEVICE_MODIFY_CONFIG); err != nil {
		return wrap(err, "set console password")
	}
	return nil
}

// checkHostDevices refuses, before anything is defined, what this host
// cannot run: io_uring where QEMU cannot set up a ring.
func (l *Libvirt) checkHostDevices(spec *api.VMSpec) error {
	if l.test {
		return nil
	}
	for i, d := range spec.Disks {
		if d.IO == "io_uring" {
			if err := ioURingSupport(); err != nil {
				return api.Errorf(api.CodeInvalid, "disks[%d]: io = \"io_uring\" is not available on this host (%s); use \"native\" or \"threads\"", i, err)
			}
		}
	}
	return nil
}

var (
	ioURingOnce sync.Once
	ioURingErr  error
)

// ioURingSupport asks QEMU's own block layer (qemu-io) whether it can
// open an image with io_uring here: QEMU must be built with liburing and
// the kernel must allow rings (kernel.io_uring_disabled, seccomp in a
// container). Checked once per process, on first use.
func ioURingSupport() error {
	ioURingOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kvm-hostd-iouring")
		if err != nil {
			ioURingErr = err
			return
		}
		defer os.RemoveAll(dir)
		img := filepath.Join(dir, "probe.raw")
		if err := os.WriteFile(img, make([]byte, 4096), 0o600); err != nil {
			ioURingErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "qemu-io", "-f", "raw", "-i", "io_uring", "-c", "read 0 4k", img).CombinedOutput()
		if err != nil {
			ioURingErr = fmt.Errorf("qemu-io -i io_uring: %s", strings.TrimSpace(string(out)+" "+err.Error()))
		}
	})
	return ioURingErr
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// unsetOr reads a libvirt mode attribute: absent or "default" is what
// the hypervisor does without one, def.
func unsetOr(v, def string) string {
	if v == "" || v == "default" {
		return def
	}
	return v
}
