package service_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// TestServedPools runs kvm-hostd on libvirt's test driver, which ships a
// dir pool "default-pool" (100 GiB): served with --pool and marked with
// --shared-pool, it is reported with its type, space and shared; volumes
// go there; one larger than its free space is refused with 409 and the
// numbers, and so is a grow past it; an encrypted volume there needs its key;
// a reservation checks the arriving VM's shared disks;
// a pool the host does not serve is 404 for volumes and VM disks alike.
func TestServedPools(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kvm-hostd process")
	}
	c := harness.Start(t, harness.Options{
		Hosts:     []string{"pools"},
		ExtraArgs: []string{"--pool", "default-pool", "--shared-pool", "default-pool"},
	})
	ctx := context.Background()
	cl, err := client.New(client.Options{Endpoint: c.Hosts[0].URL, Token: c.Token})
	if err != nil {
		t.Fatal(err)
	}
	h, err := cl.Host(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Pools) != 2 || h.Pools[0].Name != "default" || h.Pools[0].Shared {
		t.Fatalf("pools %+v, want default (not shared) and default-pool", h.Pools)
	}
	p := h.Pool("default-pool")
	if p == nil || p.Type != "dir" || !p.Shared || p.CapacityMiB != 100<<10 || p.FreeMiB <= 0 || p.FreeMiB > p.CapacityMiB {
		t.Fatalf("default-pool reported as %+v", p)
	}
	if _, err := cl.PutVolume(ctx, "default-pool", "d1", api.VolumeSpec{SizeMiB: 64}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.GetVolume(ctx, "default-pool", "d1"); err != nil {
		t.Fatal(err)
	}
	_, err = cl.PutVolume(ctx, "default-pool", "huge", api.VolumeSpec{SizeMiB: p.FreeMiB + 1})
	if !api.IsCode(err, api.CodeFull) || !strings.Contains(err.Error(), "does not fit") || !strings.Contains(err.Error(), "MiB free") {
		t.Fatalf("a volume larger than the pool's free space: %v, want 409 full with the numbers", err)
	}
	big := p.FreeMiB + 100
	_, err = cl.UpdateVolume(ctx, "default-pool", "d1", api.VolumeUpdate{SizeMiB: &big})
	if !api.IsCode(err, api.CodeFull) {
		t.Fatalf("growing past the pool's free space: %v, want 409 full", err)
	}
	// An encrypted disk on a shared directory pool opens on every host
	// holding its key; this host holds none, so it refuses it (409 naming
	// the key), and so does a reservation for an arriving VM that uses it.
	_, err = cl.PutVolume(ctx, "default-pool", "enc", api.VolumeSpec{SizeMiB: 64, Format: api.FormatQCOW2, Encryption: &api.VolumeEncryption{Key: "prod"}})
	if !api.IsCode(err, api.CodeConflict) || !strings.Contains(err.Error(), `"prod"`) {
		t.Fatalf("an encrypted volume on a shared pool of a host without the key: %v, want 409 naming the key", err)
	}
	// A reservation names the arriving VM's shared disks: the host checks
	// it serves them as shared and sees them.
	if _, err := cl.PutReservation(ctx, "arriving", api.ReservationSpec{VCPU: 1, MemoryMiB: 64,
		SharedDisks: []api.ReservationDisk{{Pool: "default-pool", Volume: "d1"}}}); err != nil {
		t.Fatalf("a reservation with a plain shared disk: %v", err)
	}
	_, err = cl.PutReservation(ctx, "arriving2", api.ReservationSpec{VCPU: 1, MemoryMiB: 64,
		SharedDisks: []api.ReservationDisk{{Pool: "default", Volume: "d1"}}})
	if !api.IsCode(err, api.CodeInvalid) || !strings.Contains(err.Error(), "not shared") {
		t.Fatalf("a reservation naming a disk on a local pool as shared: %v, want 400", err)
	}
	_, err = cl.PutReservation(ctx, "arriving3", api.ReservationSpec{VCPU: 1, MemoryMiB: 64,
		SharedDisks: []api.ReservationDisk{{Pool: "default-pool", Volume: "nope"}}})
	if !api.IsNotFound(err) {
		t.Fatalf("a reservation naming a missing shared volume: %v, want 404", err)
	}
	for _, err := range []error{
		func() error { _, err := cl.PutVolume(ctx, "elsewhere", "d2", api.VolumeSpec{SizeMiB: 1}); return err }(),
		func() error { _, err := cl.ListVolumes(ctx, "elsewhere"); return err }(),
		func() error {
			_, err := cl.PutVM(ctx, "vm1", api.VMSpec{VCPU: 1, MemoryMiB: 64, Disks: []api.VMDisk{{Pool: "elsewhere", Volume: "d2"}}})
			return err
		}(),
	} {
		if !api.IsNotFound(err) || !strings.Contains(err.Error(), "not served by host pools") {
			t.Fatalf("unserved pool: %v, want 404 naming it", err)
		}
	}
}

// TestUnknownPoolRefusedAtStart: kvm-hostd never defines an operator's
// pool; one libvirt lacks stops the start with a message saying so.
func TestUnknownPoolRefusedAtStart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kvm-hostd process")
	}
	_, err := harness.StartCluster(harness.Options{Hosts: []string{"nopool"}, ExtraArgs: []string{"--pool", "ceph1"}})
	if err == nil || !strings.Contains(err.Error(), "libvirt has no storage pool \"ceph1\"") {
		t.Fatalf("start with an undefined --pool: %v", err)
	}
}

// TestEncryptedSharedPool: with its key, a host takes an encrypted volume
// on a shared directory pool, and a reservation for a VM arriving with it
// (the migration target's step that registers the disk's secret there)
// is admitted; a VM using it is defined and started here.
func TestEncryptedSharedPool(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kvm-hostd process")
	}
	keyDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(keyDir, "prod.key"), []byte("0123456789abcdef0123456789abcdef-test-key"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := harness.Start(t, harness.Options{
		Hosts:     []string{"keyed"},
		ExtraArgs: []string{"--pool", "default-pool", "--shared-pool", "default-pool", "--key-dir", keyDir},
	})
	ctx := context.Background()
	cl, err := client.New(client.Options{Endpoint: c.Hosts[0].URL, Token: c.Token})
	if err != nil {
		t.Fatal(err)
	}
	v, err := cl.PutVolume(ctx, "default-pool", "enc", api.VolumeSpec{SizeMiB: 64, Format: api.FormatQCOW2, Encryption: &api.VolumeEncryption{Key: "prod"}})
	if err != nil {
		t.Fatalf("an encrypted volume on a shared directory pool: %v", err)
	}
	if v.Encryption.KeyName() != "prod" {
		t.Fatalf("volume %+v, want key prod", v)
	}
	if _, err := cl.PutReservation(ctx, "arriving", api.ReservationSpec{VCPU: 1, MemoryMiB: 64,
		SharedDisks: []api.ReservationDisk{{Pool: "default-pool", Volume: "enc"}}}); err != nil {
		t.Fatalf("a reservation with an encrypted shared disk: %v", err)
	}
	if err := cl.DeleteReservation(ctx, "arriving"); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.PutVM(ctx, "vm1", api.VMSpec{VCPU: 1, MemoryMiB: 64, Disks: []api.VMDisk{{Pool: "default-pool", Volume: "enc"}}}); err != nil {
		t.Fatalf("a VM with an encrypted disk on a shared pool: %v", err)
	}
}
