package service

import (
	"context"
	"sync"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// vmListFlight coalesces concurrent GET /v1/vms. Listing reads and parses
// every domain's XML, so N callers at once cost N full scans of the same
// domains, queued on the same CPUs: with 500 domains a burst of lists took
// seconds each. Callers share scans instead, without ever being answered
// from a scan that began before they asked: a caller arriving while a scan
// runs waits for the next one, which starts when the running one ends and
// answers everyone who arrived meanwhile. So any number of concurrent
// lists costs at most two scans' time each, and every answer is at least as
// new as its request.
type vmListFlight struct {
	mu      sync.Mutex
	running *vmListScan
	next    *vmListScan
}

type vmListScan struct {
	done chan struct{}
	vms  []api.VM
	err  error
}

// vmListTimeout bounds one shared scan; it runs detached from the caller
// who started it, since others wait on it too.
const vmListTimeout = 2 * time.Minute

// list returns the VMs from a scan that started after the call.
func (f *vmListFlight) list(ctx context.Context, scan func(context.Context) ([]api.VM, error)) ([]api.VM, error) {
	f.mu.Lock()
	var mine *vmListScan
	switch {
	case f.running == nil:
		mine = &vmListScan{done: make(chan struct{})}
		f.running = mine
		go f.run(mine, scan)
	case f.next == nil:
		mine = &vmListScan{done: make(chan struct{})}
		f.next = mine
	default:
		mine = f.next
	}
	f.mu.Unlock()
	select {
	case <-mine.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if mine.err != nil {
		return nil, mine.err
	}
	// Callers share the scan: each gets its own slice.
	return append([]api.VM(nil), mine.vms...), nil
}

func (f *vmListFlight) run(s *vmListScan, scan func(context.Context) ([]api.VM, error)) {
	for s != nil {
		ctx, cancel := context.WithTimeout(context.Background(), vmListTimeout)
		s.vms, s.err = scan(ctx)
		cancel()
		close(s.done)
		f.mu.Lock()
		s = f.next
		f.running, f.next = s, nil
		f.mu.Unlock()
	}
}
