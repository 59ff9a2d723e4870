package service_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// TestAttachClaims: a volume is attached by one VM only, however many
// creates race for it, and the base of linked clones is never attached.
func TestAttachClaims(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kvm-hostd process")
	}
	c := harness.Start(t, harness.Options{Hosts: []string{"att"}, ExtraArgs: []string{"--memory-overcommit", "10"}})
	cl, err := client.New(client.Options{Endpoint: c.Hosts[0].URL, Token: c.Token, RetryMax: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Eight creates race for one disk, five rounds: exactly one wins
	// each round, the others get 409.
	const n, rounds = 8, 5
	for round := range rounds {
		disk := fmt.Sprintf("shared-%d", round)
		if _, err := cl.PutVolume(ctx, "default", disk, api.VolumeSpec{SizeMiB: 8}); err != nil {
			t.Fatal(err)
		}
		errs := make([]error, n)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, errs[i] = cl.PutVM(ctx, fmt.Sprintf("att-%d-%d", round, i), api.VMSpec{VCPU: 1, MemoryMiB: 64,
					Disks: []api.VMDisk{{Pool: "default", Volume: disk}}})
			}()
		}
		close(start)
		wg.Wait()
		won, refused := 0, 0
		for i, err := range errs {
			switch {
			case err == nil:
				won++
			case api.IsCode(err, api.CodeConflict) && strings.Contains(err.Error(), "default/"+disk):
				refused++
				if round == 0 && refused == 1 {
					t.Logf("refusal: %v", err)
				}
			default:
				t.Errorf("round %d, create %d: %v, want success or 409 naming the disk", round, i, err)
			}
		}
		v, err := cl.GetVolumeUsage(ctx, "default", disk)
		if err != nil {
			t.Fatal(err)
		}
		if won != 1 || refused != n-1 || len(v.UsedBy) != 1 {
			t.Errorf("round %d: %d creates won, %d refused, volume used by %v; want 1, %d, one VM", round, won, refused, v.UsedBy, n-1)
		}
	}

	// A base of linked clones cannot be attached (read-write is the only
	// way to attach a disk); the refusal names the clones.
	if _, err := cl.PutVolume(ctx, "default", "att-base", api.VolumeSpec{SizeMiB: 8}); err != nil {
		t.Fatal(err)
	}
	for _, cn := range []string{"att-clone-1", "att-clone-2"} {
		if _, err := cl.PutVolume(ctx, "default", cn, api.VolumeSpec{BaseVolume: "att-base"}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = cl.PutVM(ctx, "att-base-vm", api.VMSpec{VCPU: 1, MemoryMiB: 64, Disks: []api.VMDisk{{Pool: "default", Volume: "att-base"}}})
	if !api.IsCode(err, api.CodeConflict) || !strings.Contains(err.Error(), "att-clone-1, att-clone-2") {
		t.Errorf("create attaching a base: %v, want 409 naming the clones", err)
	} else {
		t.Logf("base refusal: %v", err)
	}
	// Adding it to an existing VM is refused the same way.
	if _, err := cl.PutVM(ctx, "att-grow-vm", api.VMSpec{VCPU: 1, MemoryMiB: 64}); err != nil {
		t.Fatal(err)
	}
	_, err = cl.UpdateVM(ctx, "att-grow-vm", api.VMSpec{VCPU: 1, MemoryMiB: 64, Disks: []api.VMDisk{{Pool: "default", Volume: "att-base"}}})
	if !api.IsCode(err, api.CodeConflict) || !strings.Contains(err.Error(), "linked clone") {
		t.Errorf("update attaching a base: %v, want 409 naming the clones", err)
	}
	// A clone itself attaches fine.
	if _, err := cl.PutVM(ctx, "att-clone-vm", api.VMSpec{VCPU: 1, MemoryMiB: 64, Disks: []api.VMDisk{{Pool: "default", Volume: "att-clone-1"}}}); err != nil {
		t.Errorf("create attaching a clone: %v", err)
	}
	// And the other way round: a volume a VM attaches cannot become a base.
	_, err = cl.PutVolume(ctx, "default", "att-clone-of-attached", api.VolumeSpec{BaseVolume: "att-clone-1"})
	if !api.IsCode(err, api.CodeConflict) || !strings.Contains(err.Error(), "attached to VM(s) att-clone-vm") {
		t.Errorf("clone of an attached volume: %v, want 409 naming the VM", err)
	}
}
