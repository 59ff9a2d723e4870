package service_test

import (
	"context"
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
// numbers, and so is a grow past it; an encrypted volume there is refused;
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
	// An encrypted disk on a shared pool would not open on the host its
	// VM migrates to (nothing registers its secret there): refused.
	_, err = cl.PutVolume(ctx, "default-pool", "enc", api.VolumeSpec{SizeMiB: 64, Format: api.FormatQCOW2, Encryption: &api.VolumeEncryption{Key: "prod"}})
	if !api.IsCode(err, api.CodeInvalid) || !strings.Contains(err.Error(), "shared pool default-pool") {
		t.Fatalf("an encrypted volume on a shared pool: %v, want 400 naming the pool", err)
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
