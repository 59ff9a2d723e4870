package hypervisor

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/kvmfleet/terraform-provider-kvm/backend/service"
	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

var seq atomic.Int64

// uniq gives a per-test name: test:///default state lives per process.
func uniq(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, time.Now().UnixNano()%100000, seq.Add(1))
}

func openTest(t *testing.T) *Libvirt {
	t.Helper()
	l, err := Open("test:///default", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	if err := l.EnsurePool(context.Background(), "default", "/default-pool"); err != nil {
		t.Fatal(err)
	}
	return l
}

func mustCode(t *testing.T, err error, code string) {
	t.Helper()
	if !api.IsCode(err, code) {
		t.Fatalf("want %s error, got %v", code, err)
	}
}

func TestTestDriverVolumes(t *testing.T) {
	ctx := context.Background()
	l := openTest(t)
	base, clone := uniq("base"), uniq("clone")
	v, err := l.CreateVolume(ctx, "default", base, api.VolumeSpec{SizeMiB: 100, Format: "qcow2",
		SourceURL: "http://example/img", SourceChecksum: "sha256:ab", IOTune: &api.IOTune{ReadIOPSSec: 100}})
	if err != nil {
		t.Fatal(err)
	}
	if v.SizeMiB != 100 || v.Format != "qcow2" || v.Path == "" || v.SourceURL != "http://example/img" ||
		v.SourceChecksum != "sha256:ab" || v.IOTune == nil || v.IOTune.ReadIOPSSec != 100 {
		t.Fatalf("volume: %+v", v)
	}
	_, err = l.CreateVolume(ctx, "default", base, api.VolumeSpec{SizeMiB: 1})
	mustCode(t, err, api.CodeConflict)

	c, err := l.CreateVolume(ctx, "default", clone, api.VolumeSpec{SizeMiB: 10, BaseVolume: base})
	if err != nil {
		t.Fatal(err)
	}
	if c.BaseVolume != base || c.SizeMiB != 100 || c.Format != "qcow2" {
		t.Fatalf("clone: %+v", c)
	}
	_, children, err := l.VolumeUsage(ctx, "default", base)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(children, []string{clone}) {
		t.Fatalf("children: %v", children)
	}

	if err := l.WriteVolume(ctx, "default", base, strings.NewReader(strings.Repeat("x", 3*mib)), 3*mib); err != nil {
		t.Fatal(err)
	}
	if b, _ := l.GetVolume(ctx, "default", base); b.AllocatedMiB != 3 {
		t.Fatalf("allocated after write: %d", b.AllocatedMiB)
	}

	mustCode(t, l.ResizeVolume(ctx, "default", clone, 50), api.CodeInvalid)
	if err := l.ResizeVolume(ctx, "default", clone, 200); err != nil {
		t.Fatal(err)
	}
	if c, _ = l.GetVolume(ctx, "default", clone); c.SizeMiB != 200 || c.BaseVolume != base {
		t.Fatalf("after resize: %+v", c)
	}
	if err := l.SetVolumeIOTune(ctx, "default", clone, &api.IOTune{WriteBytesSec: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if c, _ = l.GetVolume(ctx, "default", clone); c.IOTune == nil || c.IOTune.WriteBytesSec != 1<<20 {
		t.Fatalf("iotune: %+v", c.IOTune)
	}

	vm := uniq("vm")
	if _, err := l.CreateVM(ctx, vm, api.VMSpec{VCPU: 1, MemoryMiB: 64, Disks: []api.VMDisk{{Pool: "default", Volume: clone}}}, service.VMMeta{}); err != nil {
		t.Fatal(err)
	}
	if users, _, _ := l.VolumeUsage(ctx, "default", clone); !reflect.DeepEqual(users, []string{vm}) {
		t.Fatalf("used by: %v", users)
	}
	vols, err := l.ListVolumes(ctx, "default")
	if err != nil || len(vols) < 2 {
		t.Fatalf("list: %v %v", len(vols), err)
	}
	if err := l.DeleteVM(ctx, vm, 0); err != nil {
		t.Fatal(err)
	}
	if users, _, _ := l.VolumeUsage(ctx, "default", clone); len(users) != 0 {
		t.Fatalf("used by after delete: %v", users)
	}
	if err := l.DeleteVolume(ctx, "default", clone); err != nil {
		t.Fatal(err)
	}
	if err := l.DeleteVolume(ctx, "default", base); err != nil {
		t.Fatal(err)
	}
	_, err = l.GetVolume(ctx, "default", base)
	mustCode(t, err, api.CodeNotFound)
	mustCode(t, l.DeleteVolume(ctx, "default", base), api.CodeNotFound)
	_, err = l.GetVolume(ctx, "nopool", base)
	mustCode(t, err, api.CodeNotFound)
}

func TestTestDriverVMRoundTrip(t *testing.T) {
	ctx := context.Background()
	l := openTest(t)
	d1, d2 := uniq("d1"), uniq("d2")
	for _, d := range []string{d1, d2} {
		if _, err := l.CreateVolume(ctx, "default", d, api.VolumeSpec{SizeMiB: 10}); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		_ = l.DeleteVolume(ctx, "default", d1)
		_ = l.DeleteVolume(ctx, "default", d2)
	})
	to := int64(5)
	spec := api.VMSpec{
		VCPU: 4, MemoryMiB: 128, MaxMemoryMiB: 256,
		CPU:   &api.CPU{Mode: "host-passthrough", Sockets: 1, Cores: 2, Threads: 2, Pinning: []string{"0", "1", "0-1", "1"}},
		Disks: []api.VMDisk{{Pool: "default", Volume: d1, Bus: "virtio"}, {Pool: "default", Volume: d2, Bus: "sata"}},
		Interfaces: []api.VMInterface{
			{Network: "net1", MAC: "52:54:00:aa:bb:cc", Model: "virtio", Bridge: "kvm-net1", VLAN: 42},
			{Network: "net2", Model: "e1000", Bridge: "kvm-net2"},
		},
		CloudInit:          &api.CloudInit{UserData: "#cloud-config\nusers: []\n", MetaData: "instance-id: x\n", NetworkConfig: "version: 2\n"},
		Running:            true,
		Autostart:          true,
		Description:        `a <b> & "c" 'd'` + "\n  indented\ttab",
		Tags:               map[string]string{"team": "core", "x&y": `<v "q">`},
		ShutdownTimeoutSec: &to,
	}
	name := uniq("vm")
	vm, err := l.CreateVM(ctx, name, spec, service.VMMeta{Owner: "alice", RequestID: "req-1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.DeleteVM(ctx, name, 0) })
	if vm.UUID == "" || vm.State != api.StateRunning || vm.Owner != "alice" || vm.RequestID != "req-1" {
		t.Fatalf("vm: %+v", vm)
	}
	got := vm.VMSpec
	if got.Interfaces[1].MAC == "" {
		t.Fatalf("no generated MAC")
	}
	want := spec
	want.UUID = vm.UUID
	agent := true
	want.GuestAgent = &agent
	want.Firmware = api.FirmwareBIOS // reads always set it
	want.RNG = &agent                // rng defaults to true as well
	want.Disks = []api.VMDisk{{Pool: "default", Volume: d1, Bus: "virtio", Target: "vda", Cache: "none", Discard: "unmap"},
		{Pool: "default", Volume: d2, Bus: "sata", Target: "sda", Cache: "none", Discard: "unmap"}}
	want.Interfaces = append([]api.VMInterface(nil), spec.Interfaces...)
	want.Interfaces[1].MAC = got.Interfaces[1].MAC
	// user-data is a secret: read back as its hash only.
	want.CloudInit = &api.CloudInit{UserDataSHA256: api.UserDataHash(spec.CloudInit.UserData), MetaData: spec.CloudInit.MetaData, NetworkConfig: spec.CloudInit.NetworkConfig}
	for i := range got.Interfaces {
		got.Interfaces[i].Port = ""
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
	}
	if got.CPU == nil || !reflect.DeepEqual(*got.CPU, *want.CPU) {
		t.Fatalf("cpu: %+v", got.CPU)
	}
	r, err := l.Resources(ctx)
	if err != nil || r.VMCount < 1 || r.AllocatedVCPU < 4 || r.AllocatedMemoryMiB < 256 || r.DomainType != "test" || r.CPUMode != "" {
		t.Fatalf("resources: %+v %v", r, err)
	}
	list, err := l.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, v := range list {
		found = found || v.Name == name
	}
	if !found {
		t.Fatal("not listed")
	}
	_, err = l.CreateVM(ctx, name, spec, service.VMMeta{})
	mustCode(t, err, api.CodeConflict)
}

func TestTestDriverUpdate(t *testing.T) {
	ctx := context.Background()
	l := openTest(t)
	d1 := uniq("d")
	if _, err := l.CreateVolume(ctx, "default", d1, api.VolumeSpec{SizeMiB: 10}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.DeleteVolume(ctx, "default", d1) })
	name := uniq("vm")
	zero := int64(0)
	spec := api.VMSpec{VCPU: 1, MemoryMiB: 64, MaxMemoryMiB: 128, Running: true, ShutdownTimeoutSec: &zero,
		Interfaces: []api.VMInterface{{Network: "n", Bridge: "kvm-n"}}}
	vm, err := l.CreateVM(ctx, name, spec, service.VMMeta{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.DeleteVM(ctx, name, 0) })
	mac := vm.Interfaces[0].MAC

	// Live: memory within max, description, tags, autostart.
	spec.MemoryMiB = 100
	spec.Description = "now <live>"
	spec.Tags = map[string]string{"a": "b"}
	spec.Autostart = true
	restarted, err := l.UpdateVM(ctx, name, spec)
	if err != nil || restarted {
		t.Fatalf("live update: restarted=%v err=%v", restarted, err)
	}
	vm, _ = l.GetVM(ctx, name)
	if vm.MemoryMiB != 100 || vm.Description != spec.Description || vm.Tags["a"] != "b" || !vm.Autostart || vm.State != api.StateRunning {
		t.Fatalf("after live update: %+v", vm)
	}
	if vm.Interfaces[0].MAC != mac {
		t.Fatalf("MAC changed: %s -> %s", mac, vm.Interfaces[0].MAC)
	}

	// Restart: vCPUs and a new disk.
	spec.VCPU = 2
	spec.Disks = []api.VMDisk{{Pool: "default", Volume: d1}}
	restarted, err = l.UpdateVM(ctx, name, spec)
	if err != nil || !restarted {
		t.Fatalf("restart update: restarted=%v err=%v", restarted, err)
	}
	vm, _ = l.GetVM(ctx, name)
	if vm.VCPU != 2 || len(vm.Disks) != 1 || vm.Disks[0].Target != "vda" || vm.State != api.StateRunning || vm.Interfaces[0].MAC != mac {
		t.Fatalf("after restart update: %+v", vm)
	}

	// Stop, then a hardware change on a stopped VM needs no restart.
	spec.Running = false
	if restarted, err = l.UpdateVM(ctx, name, spec); err != nil || restarted {
		t.Fatalf("stop: %v %v", restarted, err)
	}
	spec.VCPU = 1
	if restarted, err = l.UpdateVM(ctx, name, spec); err != nil || restarted {
		t.Fatalf("offline change: %v %v", restarted, err)
	}
	vm, _ = l.GetVM(ctx, name)
	if vm.State != api.StateShutoff || vm.VCPU != 1 {
		t.Fatalf("after stop: %+v", vm)
	}
	_, err = l.UpdateVM(ctx, uniq("missing"), spec)
	mustCode(t, err, api.CodeNotFound)
}

func TestTestDriverSnapshots(t *testing.T) {
	ctx := context.Background()
	l := openTest(t)
	name := uniq("vm")
	if _, err := l.CreateVM(ctx, name, api.VMSpec{VCPU: 1, MemoryMiB: 64, Running: true}, service.VMMeta{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.DeleteVM(ctx, name, 0) })
	desc := `snap <1> & "all"`
	s1, err := l.CreateSnapshot(ctx, name, "s1", api.SnapshotSpec{Description: desc, IncludeMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	if s1.Description != desc || !s1.IncludeMemory || s1.CreatedAt.IsZero() || !s1.Current || s1.Parent != "" {
		t.Fatalf("s1: %+v", s1)
	}
	checkSnapshotMemory(t, l, name, "s1", true)
	// Without memory: refused while running, taken once stopped.
	_, err = l.CreateSnapshot(ctx, name, "s2", api.SnapshotSpec{})
	mustCode(t, err, api.CodeInvalid)
	stopVM(t, l, name)
	_, err = l.CreateSnapshot(ctx, name, "s3", api.SnapshotSpec{IncludeMemory: true})
	mustCode(t, err, api.CodeInvalid)
	s2, err := l.CreateSnapshot(ctx, name, "s2", api.SnapshotSpec{})
	if err != nil {
		t.Fatal(err)
	}
	if s2.IncludeMemory || s2.Parent != "s1" || !s2.Current {
		t.Fatalf("s2: %+v", s2)
	}
	checkSnapshotMemory(t, l, name, "s2", false)
	_, err = l.CreateSnapshot(ctx, name, "s2", api.SnapshotSpec{})
	mustCode(t, err, api.CodeConflict)
	list, err := l.ListSnapshots(ctx, name)
	if err != nil || len(list) != 2 {
		t.Fatalf("list: %v %v", list, err)
	}
	if err := l.RevertSnapshot(ctx, name, "s1"); err != nil {
		t.Fatal(err)
	}
	s1, _ = l.GetSnapshot(ctx, name, "s1")
	s2, _ = l.GetSnapshot(ctx, name, "s2")
	if !s1.Current || s2.IncludeMemory || !s1.IncludeMemory {
		t.Fatalf("after revert: %+v %+v", s1, s2)
	}
	if vm, _ := l.GetVM(ctx, name); vm.State != api.StateRunning {
		t.Fatalf("state after revert: %s", vm.State)
	}
	if err := l.DeleteSnapshot(ctx, name, "s2"); err != nil {
		t.Fatal(err)
	}
	_, err = l.GetSnapshot(ctx, name, "s2")
	mustCode(t, err, api.CodeNotFound)
	mustCode(t, l.DeleteSnapshot(ctx, name, "s2"), api.CodeNotFound)
	_, err = l.ListSnapshots(ctx, uniq("missing"))
	mustCode(t, err, api.CodeNotFound)
}

func TestTestDriverNotFoundAndUnsupported(t *testing.T) {
	ctx := context.Background()
	l := openTest(t)
	missing := uniq("missing")
	_, err := l.GetVM(ctx, missing)
	mustCode(t, err, api.CodeNotFound)
	mustCode(t, l.DeleteVM(ctx, missing, 0), api.CodeNotFound)
	_, err = l.GetSnapshot(ctx, missing, "x")
	mustCode(t, err, api.CodeNotFound)
	_, err = l.CreateVM(ctx, uniq("vm"), api.VMSpec{VCPU: 1, MemoryMiB: 64, Disks: []api.VMDisk{{Pool: "default", Volume: missing}}}, service.VMMeta{})
	mustCode(t, err, api.CodeNotFound)
	mustCode(t, l.MigrateVM(ctx, missing, api.MigrateRequest{TargetURI: "qemu+tcp://x/system"}, nil), api.CodeUnsupported)
	if err := l.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if l.ManagesSwitchPorts() {
		t.Fatal("test driver does not manage switch ports")
	}
}

// checkSnapshotMemory reads the snapshot's XML from libvirt and checks that
// it stored memory exactly when the API says include_memory.
func checkSnapshotMemory(t *testing.T, l *Libvirt, vm, name string, want bool) {
	t.Helper()
	var x libvirtxml.DomainSnapshot
	err := l.withDomain(context.Background(), vm, func(c *libvirt.Connect, d *libvirt.Domain) error {
		s, err := d.SnapshotLookupByName(name, 0)
		if err != nil {
			return err
		}
		defer s.Free()
		doc, err := s.GetXMLDesc(0)
		if err != nil {
			return err
		}
		return x.Unmarshal(doc)
	})
	if err != nil {
		t.Fatal(err)
	}
	mem := ""
	if x.Memory != nil {
		mem = x.Memory.Snapshot
	}
	stored := mem == "internal" || mem == "external" || (mem == "" && (x.State == "running" || x.State == "paused"))
	if stored != want {
		t.Errorf("snapshot %s of %s: libvirt stored memory=%v (<memory snapshot=%q>, state %q), want %v", name, vm, stored, mem, x.State, want)
	}
	got, err := l.GetSnapshot(context.Background(), vm, name)
	if err != nil {
		t.Fatal(err)
	}
	if got.IncludeMemory != stored {
		t.Errorf("snapshot %s of %s: include_memory %v, libvirt stored memory=%v", name, vm, got.IncludeMemory, stored)
	}
}

// stopVM powers a domain off.
func stopVM(t *testing.T, l *Libvirt, name string) {
	t.Helper()
	err := l.withDomain(context.Background(), name, func(c *libvirt.Connect, d *libvirt.Domain) error {
		return d.Destroy()
	})
	if err != nil {
		t.Fatal(err)
	}
}

// domainOf returns the persistent definition of a domain.
func domainOf(t *testing.T, l *Libvirt, name string) *libvirtxml.Domain {
	t.Helper()
	var x *libvirtxml.Domain
	err := l.withDomain(context.Background(), name, func(_ *libvirt.Connect, d *libvirt.Domain) error {
		var err error
		x, err = domXML(d, libvirt.DOMAIN_XML_INACTIVE)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func TestTestDriverGuestAgent(t *testing.T) {
	ctx := context.Background()
	l := openTest(t)
	zero := int64(0)
	off, on := false, true

	// Default: the channel is there and reads back as guest_agent = true.
	name := uniq("vm")
	spec := api.VMSpec{VCPU: 1, MemoryMiB: 64, Running: true, ShutdownTimeoutSec: &zero}
	vm, err := l.CreateVM(ctx, name, spec, service.VMMeta{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.DeleteVM(ctx, name, 0) })
	if vm.GuestAgent == nil || !*vm.GuestAgent {
		t.Fatalf("guest_agent default: %v", vm.GuestAgent)
	}
	c := agentChannelOf(domainOf(t, l, name))
	if c == nil || c.Source == nil || c.Source.UNIX == nil {
		t.Fatalf("no unix agent channel in %+v", domainOf(t, l, name).Devices.Channels)
	}

	// Turning it off redefines the domain with one restart, and back on.
	spec.GuestAgent = &off
	restarted, err := l.UpdateVM(ctx, name, spec)
	if err != nil || !restarted {
		t.Fatalf("guest_agent off: restarted=%v err=%v", restarted, err)
	}
	if vm, _ = l.GetVM(ctx, name); vm.GuestAgent == nil || *vm.GuestAgent || agentChannelOf(domainOf(t, l, name)) != nil {
		t.Fatalf("after off: %v", vm.GuestAgent)
	}
	spec.GuestAgent = &on
	if restarted, err = l.UpdateVM(ctx, name, spec); err != nil || !restarted {
		t.Fatalf("guest_agent on: restarted=%v err=%v", restarted, err)
	}
	if vm, _ = l.GetVM(ctx, name); !*vm.GuestAgent || agentChannelOf(domainOf(t, l, name)) == nil {
		t.Fatalf("after on: %v", vm.GuestAgent)
	}
	// An unchanged guest_agent is no restart.
	spec.Description = "x"
	if restarted, err = l.UpdateVM(ctx, name, spec); err != nil || restarted {
		t.Fatalf("unchanged: restarted=%v err=%v", restarted, err)
	}

	// A domain defined before guest_agent existed has no channel: false.
	old := uniq("old")
	if _, err := l.CreateVM(ctx, old, api.VMSpec{VCPU: 1, MemoryMiB: 64, GuestAgent: &off}, service.VMMeta{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.DeleteVM(ctx, old, 0) })
	if vm, _ = l.GetVM(ctx, old); vm.GuestAgent == nil || *vm.GuestAgent {
		t.Fatalf("domain without channel: %v", vm.GuestAgent)
	}
}
