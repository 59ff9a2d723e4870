package service

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

func TestVolumeClaims(t *testing.T) {
	var c volumeClaims
	ctx := context.Background()
	w, err := c.acquire(ctx, "p", "v", "being resized", false, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	// Held exclusively: readers and writers get a 409 naming the holder.
	for _, shared := range []bool{false, true} {
		_, err := c.acquire(ctx, "p", "v", "other", shared, 10*time.Millisecond)
		if !api.IsCode(err, api.CodeConflict) || !strings.Contains(err.Error(), "volume p/v is busy: it is being resized") {
			t.Errorf("shared=%v while held: %v", shared, err)
		}
	}
	// Another volume is independent.
	if u, err := c.acquire(ctx, "p", "w", "x", false, time.Millisecond); err != nil {
		t.Errorf("other volume: %v", err)
	} else {
		u()
	}
	// A waiter gets it once the holder lets go; release is idempotent.
	got := make(chan error, 1)
	go func() {
		u, err := c.acquire(ctx, "p", "v", "download", false, 0)
		if err == nil {
			u()
		}
		got <- err
	}()
	time.Sleep(20 * time.Millisecond)
	w()
	w()
	if err := <-got; err != nil {
		t.Fatalf("waiter: %v", err)
	}
	// Readers share; a writer waits for all of them.
	r1, _ := c.acquire(ctx, "p", "v", "read", true, time.Millisecond)
	r2, err := c.acquire(ctx, "p", "v", "read", true, time.Millisecond)
	if err != nil {
		t.Fatalf("second reader: %v", err)
	}
	if _, err := c.acquire(ctx, "p", "v", "delete", false, 10*time.Millisecond); !api.IsCode(err, api.CodeConflict) {
		t.Errorf("writer while read: %v", err)
	}
	r1()
	if _, err := c.acquire(ctx, "p", "v", "delete", false, 10*time.Millisecond); !api.IsCode(err, api.CodeConflict) {
		t.Errorf("writer while one reader is left: %v", err)
	}
	r2()
	if len(c.m) != 0 {
		t.Errorf("claims left after release: %v", c.m)
	}

	// Hammer: exclusive holders never overlap.
	var inside, overlaps atomic.Int32
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				u, err := c.acquire(ctx, "p", "h", "x", false, 0)
				if err != nil {
					t.Error(err)
					return
				}
				if inside.Add(1) > 1 {
					overlaps.Add(1)
				}
				inside.Add(-1)
				u()
			}
		}()
	}
	wg.Wait()
	if overlaps.Load() > 0 || len(c.m) != 0 {
		t.Errorf("%d overlaps, %d claims left", overlaps.Load(), len(c.m))
	}
}
