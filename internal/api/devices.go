package api

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"unicode"
)

// Console types, disk cache, I/O and discard modes a VM may ask for.
var (
	GraphicsTypes = []string{"vnc", "spice"}
	DiskCaches    = []string{"none", "writeback", "directsync", "unsafe"}
	DiskIOModes   = []string{"native", "threads", "io_uring"}
	DiskDiscards  = []string{"unmap", "ignore"}
)

// DefaultDiskDiscard is what a disk that names no discard mode gets: the
// guest's TRIM/UNMAP reaches the volume, so a thin (qcow2) volume shrinks
// back when the guest frees blocks.
const DefaultDiskDiscard = "unmap"

// MaxVNCPassword is the longest VNC password: the RFB VNC authentication
// uses the first 8 bytes only, and a longer one would be cut silently.
const MaxVNCPassword = 8

// MaxGraphicsPassword bounds a SPICE password.
const MaxGraphicsPassword = 256

// CheckGraphicsListen reports whether addr is an IP address a console may
// listen on (no host names: libvirt would resolve them at every start).
func CheckGraphicsListen(addr string) error {
	ip, err := netip.ParseAddr(addr)
	if err != nil || ip.Zone() != "" {
		return fmt.Errorf("graphics.listen %q is not an IP address (e.g. 127.0.0.1, 0.0.0.0 or ::1)", addr)
	}
	return nil
}

// CheckGraphicsPassword checks a console password for its type.
func CheckGraphicsPassword(typ, pw string) error {
	limit := MaxGraphicsPassword
	if typ == "vnc" {
		limit = MaxVNCPassword
	}
	if len(pw) > limit {
		return fmt.Errorf("graphics password is %d bytes; a %s password has at most %d", len(pw), typ, limit)
	}
	for _, r := range pw {
		if unicode.IsControl(r) {
			return fmt.Errorf("graphics password contains a control character")
		}
	}
	return nil
}

// CheckDiskIO reports a cache/io combination QEMU refuses to start:
// native AIO needs O_DIRECT, which only cache none and directsync use.
func CheckDiskIO(cache, io string) error {
	if io == "native" && cache != "none" && cache != "directsync" {
		return fmt.Errorf("io = \"native\" needs cache = \"none\" or \"directsync\" (QEMU's native AIO works only with O_DIRECT), not %q", cache)
	}
	return nil
}

// CheckQueues checks a NIC's multiqueue setting: one queue pair per vCPU
// at most, and only virtio-net has more than one.
func CheckQueues(queues, vcpu int64, model string) error {
	if queues < 0 {
		return fmt.Errorf("queues %d must be at least 1", queues)
	}
	if queues > 1 && model != "virtio" {
		return fmt.Errorf("queues = %d needs model = \"virtio\" (%s has one queue)", queues, model)
	}
	if vcpu > 0 && queues > vcpu {
		return fmt.Errorf("queues = %d is more than the VM's %d vCPUs (use 1..vcpu)", queues, vcpu)
	}
	return nil
}

// validateDevices fills the defaults of the console, disk modes and NIC
// queues of spec and checks them; ValidateVMSpec calls it.
func validateDevices(spec *VMSpec) error {
	if g := spec.Graphics; g != nil {
		if !slices.Contains(GraphicsTypes, g.Type) {
			return invalidf("graphics.type %q is not one of %s", g.Type, strings.Join(GraphicsTypes, ", "))
		}
		if g.Listen == "" {
			g.Listen = DefaultGraphicsListen
		}
		if err := CheckGraphicsListen(g.Listen); err != nil {
			return invalidf("%s", err)
		}
		if err := CheckGraphicsPassword(g.Type, g.Password); err != nil {
			return invalidf("%s", err)
		}
		g.Port = 0 // read back only
	}
	for i := range spec.Disks {
		d := &spec.Disks[i]
		if d.Cache == "" {
			d.Cache = DefaultDiskCache
		}
		if d.Discard == "" {
			d.Discard = DefaultDiskDiscard
		}
		if !slices.Contains(DiskCaches, d.Cache) {
			return invalidf("disks[%d].cache %q is not one of %s", i, d.Cache, strings.Join(DiskCaches, ", "))
		}
		if d.IO != "" && !slices.Contains(DiskIOModes, d.IO) {
			return invalidf("disks[%d].io %q is not one of %s", i, d.IO, strings.Join(DiskIOModes, ", "))
		}
		if !slices.Contains(DiskDiscards, d.Discard) {
			return invalidf("disks[%d].discard %q is not one of %s", i, d.Discard, strings.Join(DiskDiscards, ", "))
		}
		if err := CheckDiskIO(d.Cache, d.IO); err != nil {
			return invalidf("disks[%d]: %s", i, err)
		}
	}
	for i := range spec.Interfaces {
		n := &spec.Interfaces[i]
		if err := CheckQueues(n.Queues, spec.VCPU, n.Model); err != nil {
			return invalidf("network_interfaces[%d]: %s", i, err)
		}
		if n.Queues == 1 {
			n.Queues = 0 // one queue is no multiqueue: the same domain
		}
	}
	return nil
}
