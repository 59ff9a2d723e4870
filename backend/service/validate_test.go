package service

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

func TestVMSpecDiffIgnoresHostFilledFields(t *testing.T) {
	want := api.VMSpec{VCPU: 1, MemoryMiB: 64, Disks: []api.VMDisk{{Pool: "default", Volume: "d"}}, Interfaces: []api.VMInterface{{Network: "n"}}}
	have := want
	have.MaxMemoryMiB = 64
	have.Interfaces = []api.VMInterface{{Network: "n", MAC: "52:54:00:00:00:01", Bridge: "kvm-n"}}
	if d := vmSpecDiff(want, have); d != "" {
		t.Fatalf("diff %q, want none", d)
	}
	want.VCPU = 2
	if d := vmSpecDiff(want, have); !strings.HasPrefix(d, "vcpu") {
		t.Fatalf("diff %q, want vcpu", d)
	}
}

// keyedMutex serialises one key and lets different keys run in parallel.
func TestKeyedMutex(t *testing.T) {
	var k keyedMutex
	var inside, maxInside atomic.Int32
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			unlock := k.Lock("vm/a")
			n := inside.Add(1)
			if n > maxInside.Load() {
				maxInside.Store(n)
			}
			time.Sleep(time.Millisecond)
			inside.Add(-1)
			unlock()
		}()
	}
	wg.Wait()
	if maxInside.Load() != 1 {
		t.Fatalf("%d holders of one key at once", maxInside.Load())
	}
	unlockA := k.Lock("vm/a")
	done := make(chan struct{})
	go func() { k.Lock("vm/b")(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("a different key waited for vm/a")
	}
	unlockA()
	if len(k.m) != 0 {
		t.Fatalf("entries leaked: %d", len(k.m))
	}
}
