package service

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Lists arriving while a scan runs share the next scan, and none is
// answered from a scan that began before it asked.
func TestVMListFlightSharesScansAndStaysFresh(t *testing.T) {
	var f vmListFlight
	var scans atomic.Int64
	gate := make(chan struct{})
	scan := func(context.Context) ([]api.VM, error) {
		n := scans.Add(1)
		if n == 1 {
			<-gate // the first scan is slow
		}
		return []api.VM{{Name: "scan", VMSpec: api.VMSpec{VCPU: n}}}, nil
	}
	ctx := context.Background()
	first := make(chan []api.VM, 1)
	go func() {
		vms, _ := f.list(ctx, scan)
		first <- vms
	}()
	for scans.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	// 50 lists arrive while scan 1 runs.
	var wg sync.WaitGroup
	got := make([]int64, 50)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			vms, err := f.list(ctx, scan)
			if err != nil {
				t.Error(err)
				return
			}
			got[i] = vms[0].VCPU
		}()
	}
	time.Sleep(50 * time.Millisecond) // let them all queue
	close(gate)
	wg.Wait()
	if vms := <-first; vms[0].VCPU != 1 {
		t.Errorf("first list answered by scan %d, want 1", vms[0].VCPU)
	}
	for i, g := range got {
		if g != 2 {
			t.Errorf("list %d answered by scan %d, want 2 (the one that started after it asked)", i, g)
		}
	}
	if n := scans.Load(); n != 2 {
		t.Errorf("51 lists took %d scans, want 2", n)
	}
	// Later lists scan again.
	vms, err := f.list(ctx, scan)
	if err != nil || vms[0].VCPU != 3 {
		t.Errorf("a later list got %+v, %v; want a new scan", vms, err)
	}
}
