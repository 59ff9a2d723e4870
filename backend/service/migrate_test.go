package service_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// TestMigrationPrerequisites covers what live migration relies on besides
// libvirt (the real move is TestAccMigrate_live in provider/kvm): the host
// reports its --migration-uri, a volume can be recreated fresh only while
// nothing uses it, and migrations the host cannot do are refused at once.
func TestMigrationPrerequisites(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kvm-hostd process")
	}
	const uri = "qemu+tcp://10.0.0.12/system"
	c := harness.Start(t, harness.Options{
		Hosts:     []string{"mig"},
		ExtraArgs: []string{"--memory-overcommit", "10", "--migration-uri", uri},
	})
	cl, err := client.New(client.Options{Endpoint: c.Hosts[0].URL, Token: c.Token})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	h, err := cl.Host(ctx)
	if err != nil || h.MigrationURI != uri {
		t.Fatalf("GET /v1/host: migration_uri %q, err %v; want %q", h.MigrationURI, err, uri)
	}

	if _, err := cl.PutVolume(ctx, "default", "mp-base", api.VolumeSpec{SizeMiB: 16}); err != nil {
		t.Fatal(err)
	}
	clone := api.VolumeSpec{BaseVolume: "mp-base"}
	if _, err := cl.PutVolume(ctx, "default", "mp-clone", clone); err != nil {
		t.Fatal(err)
	}
	recreate := clone
	recreate.Recreate = true
	v, err := cl.PutVolume(ctx, "default", "mp-clone", recreate)
	if err != nil || v.BaseVolume != "mp-base" {
		t.Fatalf("recreate unattached clone: %+v, %v", v, err)
	}
	// A base with children, and a volume with another base, are refused.
	if _, err := cl.PutVolume(ctx, "default", "mp-base", api.VolumeSpec{SizeMiB: 16, Recreate: true}); !api.IsCode(err, api.CodeConflict) {
		t.Errorf("recreate a base with children: err %v, want conflict", err)
	}

	if _, err := cl.PutVM(ctx, "mp-vm", api.VMSpec{VCPU: 1, MemoryMiB: 64, Disks: []api.VMDisk{{Pool: "default", Volume: "mp-clone"}},
		CloudInit: &api.CloudInit{UserData: "#cloud-config\n"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.PutVolume(ctx, "default", "mp-clone", recreate); !api.IsCode(err, api.CodeConflict) {
		t.Errorf("recreate an attached volume: err %v, want conflict", err)
	}

	if _, err := cl.MigrateVM(ctx, "mp-vm", api.MigrateRequest{TargetHost: "mig", TargetURI: uri}, "k1"); !api.IsCode(err, api.CodeInvalid) {
		t.Errorf("migrate to itself: err %v, want invalid", err)
	}
	// URIs that would make libvirt (or kvm-hostd's seed copy) start a
	// program, read a key file or reach a local socket never get that far.
	for i, hostile := range []string{
		"qemu+ext:///system?command=/tmp/planted.sh",
		"qemu+ssh://root@10.0.0.13/system?keyfile=/tmp/k&command=/tmp/x",
		"qemu+unix:///system?socket=/run/libvirt/libvirt-sock",
		"qemu+tcp://10.0.0.13/system?command=/bin/sh",
		"qemu:///system",
	} {
		if _, err := cl.MigrateVM(ctx, "mp-vm", api.MigrateRequest{TargetHost: "other", TargetURI: hostile}, fmt.Sprintf("hostile-%d", i)); !api.IsCode(err, api.CodeInvalid) {
			t.Errorf("migrate to %q: err %v, want invalid", hostile, err)
		}
	}
	if _, err := cl.MigrateVM(ctx, "mp-vm", api.MigrateRequest{TargetHost: "other", TargetURI: "qemu+tcp://10.0.0.13/system"}, "k2"); !api.IsCode(err, api.CodeUnsupported) {
		t.Errorf("migrate on libvirt's test driver: err %v, want unsupported", err)
	}
	if vm, err := cl.GetVM(ctx, "mp-vm"); err != nil || vm.Name != "mp-vm" {
		t.Errorf("VM after refused migrations: %v", err)
	}
}
