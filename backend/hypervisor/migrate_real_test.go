package hypervisor

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/backend/service"
	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// lockedBuffer is a log sink tests can read while the code writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *lockedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *lockedBuffer) count(s string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Count(w.b.String(), s)
}

// TestRealMigrationFailuresLeaveTheVM covers the migrations libvirt refuses
// on real QEMU: to a target that does not answer (the error, relayed by
// libvirt, reads like a lost connection; it must not be retried), of a VM
// with a snapshot (refused before an offline migration shuts it down), and
// an offline migration refused by libvirt after the shutdown (to this very
// libvirtd). Each runs exactly once and leaves the VM running here.
func TestRealMigrationFailuresLeaveTheVM(t *testing.T) {
	l, pool := openReal(t)
	logs := &lockedBuffer{}
	l.log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx := context.Background()
	disk := uniq("mig-disk")
	if _, err := l.CreateVolume(ctx, pool, disk, api.VolumeSpec{SizeMiB: 16}); err != nil {
		t.Fatal(err)
	}
	to := int64(1)
	name := uniq("mig-vm")
	if _, err := l.CreateVM(ctx, name, api.VMSpec{VCPU: 1, MemoryMiB: 64, Running: true,
		Disks: []api.VMDisk{{Pool: pool, Volume: disk}}, ShutdownTimeoutSec: &to}, service.VMMeta{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.DeleteVM(ctx, name, time.Second) })
	running := func(when string) {
		t.Helper()
		vm, err := l.GetVM(ctx, name)
		if err != nil || vm.State != api.StateRunning {
			t.Fatalf("%s: the VM should still be running on the source: %+v, %v", when, vm, err)
		}
	}
	attempts := func() int { return logs.count("migration started") }

	const unreachable = "qemu+tcp://127.0.0.1:1/system"
	for _, mode := range []string{"live", "offline"} {
		before := attempts()
		t0 := time.Now()
		err := l.MigrateVM(ctx, name, api.MigrateRequest{TargetURI: unreachable, Mode: mode}, nil)
		if err == nil || !strings.Contains(err.Error(), unreachable) || !strings.Contains(err.Error(), "nothing was changed") {
			t.Fatalf("%s migration to %s: %v", mode, unreachable, err)
		}
		if n := attempts() - before; n != 1 {
			t.Errorf("%s migration to an unreachable target ran %d times, want 1", mode, n)
		}
		t.Logf("%s migration to an unreachable target failed in %v: %v", mode, time.Since(t0), err)
		running(mode + " migration to an unreachable target")
	}

	snap := uniq("snap")
	if _, err := l.CreateSnapshot(ctx, name, snap, api.SnapshotSpec{IncludeMemory: true}); err != nil {
		t.Fatal(err)
	}
	err := l.MigrateVM(ctx, name, api.MigrateRequest{TargetURI: unreachable, Mode: "offline"}, nil)
	if !api.IsCode(err, api.CodeConflict) || !strings.Contains(err.Error(), "snapshot") {
		t.Errorf("offline migration of a VM with a snapshot: %v, want a conflict naming the snapshots", err)
	}
	running("offline migration of a VM with a snapshot")
	if err := l.DeleteSnapshot(ctx, name, snap); err != nil {
		t.Fatal(err)
	}

	// This libvirtd answers, so the VM is shut down; libvirt then refuses
	// to migrate it to itself, and the VM must be started again.
	before := attempts()
	err = l.MigrateVM(ctx, name, api.MigrateRequest{TargetURI: l.uri, Mode: "offline"}, nil)
	if err == nil {
		t.Fatal("offline migration to the same libvirtd succeeded")
	}
	if n := attempts() - before; n != 1 {
		t.Errorf("offline migration to the same host ran %d times, want 1", n)
	}
	t.Logf("offline migration to the same host: %v", err)
	running("a failed offline migration after the shutdown")
	if logs.count("the VM was started again on this host") != 1 {
		t.Error("the restart after a failed offline migration is not logged")
	}
}

// TestRealRecoverMigrations covers the startup settling of migrations a
// killed kvm-hostd left behind: a disk marked as moving with a VM that is
// still defined here (the migration failed) is kept and unmarked; one
// marked with a VM no longer here (it migrated away before the kill) is
// deleted, as MigrateVM would have done after its success; unmarked disks
// are left alone.
func TestRealRecoverMigrations(t *testing.T) {
	l, pool := openReal(t)
	ctx := context.Background()
	stayed, moved, other := uniq("stayed"), uniq("moved"), uniq("other")
	for _, v := range []string{stayed, moved, other} {
		if _, err := l.CreateVolume(ctx, pool, v, api.VolumeSpec{SizeMiB: 8}); err != nil {
			t.Fatal(err)
		}
	}
	name := uniq("rec-vm")
	vm, err := l.CreateVM(ctx, name, api.VMSpec{VCPU: 1, MemoryMiB: 64, Disks: []api.VMDisk{{Pool: pool, Volume: stayed}}}, service.VMMeta{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.DeleteVM(ctx, name, 0) })
	path := func(v string) string {
		got, err := l.GetVolume(ctx, pool, v)
		if err != nil {
			t.Fatal(err)
		}
		return got.Path
	}
	l.markMigrating([]migratedDisk{{path: path(stayed)}}, "", vm.UUID)
	l.markMigrating([]migratedDisk{{path: path(moved)}}, "", "0badc0de-0000-4000-8000-000000000001")
	if err := l.RecoverMigrations(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := l.GetVolume(ctx, pool, moved); !api.IsNotFound(err) {
		t.Errorf("the source copy of a disk whose VM migrated away is still there: %v", err)
	}
	for _, v := range []string{stayed, other} {
		if _, err := l.GetVolume(ctx, pool, v); err != nil {
			t.Errorf("volume %s: %v", v, err)
		}
	}
	if m := l.readMeta(path(stayed)); m.MigratingWith != "" {
		t.Errorf("the disk of a VM that stayed is still marked: %+v", m)
	}
}
