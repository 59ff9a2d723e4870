package hypervisor

import (
	"context"
	"fmt"
	"testing"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/kvmfleet/terraform-provider-kvm/backend/service"
	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Real-libvirt checks that read back what libvirt itself holds, not what
// kvm-hostd recorded about it.

// realBlockIOTune reads a disk's I/O limits from libvirt: the running
// domain's (live) or its definition's (config).
func realBlockIOTune(t *testing.T, l *Libvirt, dom, target string, flags libvirt.DomainModificationImpact) api.IOTune {
	t.Helper()
	var got api.IOTune
	err := l.do(context.Background(), func(c *libvirt.Connect) error {
		d, err := c.LookupDomainByName(dom)
		if err != nil {
			return err
		}
		defer d.Free()
		p, err := d.GetBlockIoTune(target, flags)
		if err != nil {
			return err
		}
		if p.TotalBytesSec != 0 || p.TotalIopsSec != 0 {
			return fmt.Errorf("total limits set: %+v", p)
		}
		got = api.IOTune{ReadBytesSec: int64(p.ReadBytesSec), WriteBytesSec: int64(p.WriteBytesSec),
			ReadIOPSSec: int64(p.ReadIopsSec), WriteIOPSSec: int64(p.WriteIopsSec)}
		return nil
	})
	if err != nil {
		t.Fatalf("GetBlockIoTune %s %s: %v", dom, target, err)
	}
	return got
}

// TestRealIOTuneReadBack applies a disk's iotune limits through kvm-hostd's
// driver and reads them back from libvirt, live and in the persistent
// definition: set when the VM is created, changed and removed while it runs.
func TestRealIOTuneReadBack(t *testing.T) {
	l, pool := openReal(t)
	ctx := context.Background()
	data := uniq("io")
	first := &api.IOTune{ReadBytesSec: 1 << 20, WriteIOPSSec: 200}
	if _, err := l.CreateVolume(ctx, pool, data, api.VolumeSpec{SizeMiB: 16, Format: "qcow2", IOTune: first}); err != nil {
		t.Fatal(err)
	}
	name := uniq("iovm")
	vm, err := l.CreateVM(ctx, name, api.VMSpec{VCPU: 1, MemoryMiB: 64, Running: true,
		Disks: []api.VMDisk{{Pool: pool, Volume: data}}}, service.VMMeta{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.DeleteVM(context.Background(), name, 0) })
	if vm.State != api.StateRunning || len(vm.Disks) != 1 {
		t.Fatalf("vm: %+v", vm)
	}
	target := vm.Disks[0].Target
	check := func(step string, want api.IOTune) {
		t.Helper()
		for _, f := range []struct {
			name  string
			flags libvirt.DomainModificationImpact
		}{{"live", libvirt.DOMAIN_AFFECT_LIVE}, {"config", libvirt.DOMAIN_AFFECT_CONFIG}} {
			if got := realBlockIOTune(t, l, name, target, f.flags); got != want {
				t.Errorf("%s: libvirt's %s limits of %s are %+v, want %+v", step, f.name, target, got, want)
			}
		}
	}
	check("at create", *first)

	second := &api.IOTune{WriteBytesSec: 10 << 20, ReadIOPSSec: 500}
	if err := l.SetVolumeIOTune(ctx, pool, data, second); err != nil {
		t.Fatal(err)
	}
	check("after a change on the running VM", *second)

	if err := l.SetVolumeIOTune(ctx, pool, data, nil); err != nil {
		t.Fatal(err)
	}
	check("after removing the limits", api.IOTune{})
}

// realSnapshotMemory reads what libvirt stored for a snapshot: its
// <memory snapshot='...'> ("internal", "external" or "no") and <state>.
func realSnapshotMemory(t *testing.T, l *Libvirt, dom, snap string) (memory, state string) {
	t.Helper()
	err := l.do(context.Background(), func(c *libvirt.Connect) error {
		d, err := c.LookupDomainByName(dom)
		if err != nil {
			return err
		}
		defer d.Free()
		s, err := d.SnapshotLookupByName(snap, 0)
		if err != nil {
			return err
		}
		defer s.Free()
		doc, err := s.GetXMLDesc(0)
		if err != nil {
			return err
		}
		var x libvirtxml.DomainSnapshot
		if err := x.Unmarshal(doc); err != nil {
			return err
		}
		memory, state = "no", x.State
		if x.Memory != nil && x.Memory.Snapshot != "" {
			memory = x.Memory.Snapshot
		}
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot %s of %s: %v", snap, dom, err)
	}
	return memory, state
}

// TestRealSnapshotMemoryReadBack takes snapshots with and without memory of
// a running VM, and without memory of a stopped one, and checks what libvirt
// stored against include_memory: a snapshot reported without memory must
// hold none (libvirt's <memory snapshot='no'/>), one with memory must hold
// it. A snapshot without memory of a running VM may instead be refused as
// invalid; it must never silently include the memory.
func TestRealSnapshotMemoryReadBack(t *testing.T) {
	l, pool := openReal(t)
	ctx := context.Background()
	disk := uniq("snapd")
	if _, err := l.CreateVolume(ctx, pool, disk, api.VolumeSpec{SizeMiB: 16, Format: "qcow2"}); err != nil {
		t.Fatal(err)
	}
	name := uniq("snapvm")
	now := int64(0) // no OS to answer ACPI: power off at once
	spec := api.VMSpec{VCPU: 1, MemoryMiB: 64, Running: true, ShutdownTimeoutSec: &now,
		Disks: []api.VMDisk{{Pool: pool, Volume: disk}}}
	if _, err := l.CreateVM(ctx, name, spec, service.VMMeta{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.DeleteVM(context.Background(), name, 0) })

	take := func(step string, includeMemory bool) {
		t.Helper()
		sn := uniq("s")
		s, err := l.CreateSnapshot(ctx, name, sn, api.SnapshotSpec{IncludeMemory: includeMemory})
		if err != nil {
			if !includeMemory && api.IsCode(err, api.CodeInvalid) {
				t.Logf("%s: refused: %v", step, err)
				return
			}
			t.Fatalf("%s: %v", step, err)
		}
		memory, state := realSnapshotMemory(t, l, name, sn)
		t.Logf("%s: libvirt stored memory=%s state=%s; kvm-hostd reports include_memory=%v", step, memory, state, s.IncludeMemory)
		stored := memory == "internal" || memory == "external"
		if stored != includeMemory {
			t.Errorf("%s: include_memory=%v, but libvirt stored <memory snapshot='%s'/> (state %s)", step, includeMemory, memory, state)
		}
		if s.IncludeMemory != stored {
			t.Errorf("%s: kvm-hostd reports include_memory=%v, libvirt stored memory=%s", step, s.IncludeMemory, memory)
		}
		if got, err := l.GetSnapshot(ctx, name, sn); err != nil || got.IncludeMemory != stored {
			t.Errorf("%s: read back include_memory=%v (%v), libvirt stored memory=%s", step, got.IncludeMemory, err, memory)
		}
	}
	take("running VM, with memory", true)
	take("running VM, without memory", false)

	spec.Running = false
	if _, err := l.UpdateVM(ctx, name, spec); err != nil {
		t.Fatal(err)
	}
	if vm, err := l.GetVM(ctx, name); err != nil || vm.State == api.StateRunning {
		t.Fatalf("VM still running: %+v %v", vm, err)
	}
	take("stopped VM, without memory", false)
}
