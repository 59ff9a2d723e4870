package service_test

import (
	"context"
	"strings"
	"testing"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// TestHugepageAdmission: on the test driver (512 free huge pages of
// 2 MiB), a stopped hugepage VM holds the pages it will take at start, a
// VM that does not fit next to it is refused with 409 and the numbers,
// one that fits is admitted, and a stopped hugepage VM is admitted again
// only where it grows. (The test driver's free count never drops: running
// VMs take nothing there.)
func TestHugepageAdmission(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kvm-hostd process")
	}
	c := harness.Start(t, harness.Options{Hosts: []string{"hp"}, ExtraArgs: []string{"--memory-overcommit", "10"}})
	cl, err := client.New(client.Options{Endpoint: c.Hosts[0].URL, Token: c.Token})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	h, err := cl.Host(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h.Hugepages == nil || h.Hugepages.SizeKiB != 2048 || h.Hugepages.Free != 512 {
		t.Fatalf("/v1/host hugepages %+v, want 512 free of 2048 KiB", h.Hugepages)
	}
	stopped := api.VMSpec{VCPU: 1, MemoryMiB: 512, Hugepages: true}
	if _, err := cl.PutVM(ctx, "hp-stopped", stopped); err != nil {
		t.Fatal(err)
	}
	_, err = cl.PutVM(ctx, "hp-big", api.VMSpec{VCPU: 1, MemoryMiB: 600, Hugepages: true, Running: true})
	if !api.IsCode(err, api.CodeFull) || !strings.Contains(err.Error(), "needs 300 pages of 2048 KiB, 256 free") ||
		!strings.Contains(err.Error(), "256 held") {
		t.Fatalf("a VM beyond the free huge pages: %v", err)
	}
	if _, err := cl.PutVM(ctx, "hp-fits", api.VMSpec{VCPU: 1, MemoryMiB: 256, Hugepages: true, Running: true}); err != nil {
		t.Fatalf("a VM that fits: %v", err)
	}
	stopped.Tags = map[string]string{"k": "v"}
	if _, err := cl.UpdateVM(ctx, "hp-stopped", stopped); err != nil {
		t.Fatalf("retagging a stopped hugepage VM: %v", err)
	}
	stopped.MemoryMiB = 1100
	if _, err := cl.UpdateVM(ctx, "hp-stopped", stopped); !api.IsCode(err, api.CodeFull) || !strings.Contains(err.Error(), "needs 550 pages") {
		t.Fatalf("growing a stopped hugepage VM beyond the free pages: %v", err)
	}
	// Without hugepages, the same VM is no concern of the huge pages.
	if _, err := cl.PutVM(ctx, "plain", api.VMSpec{VCPU: 1, MemoryMiB: 600, Running: true}); err != nil {
		t.Fatal(err)
	}
}
