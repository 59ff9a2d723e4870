package service

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Concurrent requests with one key run the work once and all get its
// result.
func TestIdempotencySingleFlight(t *testing.T) {
	c := newIdempotencyCache(time.Hour)
	var runs atomic.Int64
	release := make(chan struct{})
	var wg sync.WaitGroup
	results := make([]any, 20)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := c.Do("k1", "fp", func() (any, error) {
				runs.Add(1)
				<-release
				return "op-1", nil
			})
			if err != nil {
				t.Error(err)
			}
			results[i] = v
		}()
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	if n := runs.Load(); n != 1 {
		t.Fatalf("work ran %d times for one key, want 1", n)
	}
	for i, r := range results {
		if r != "op-1" {
			t.Fatalf("caller %d got %v", i, r)
		}
	}
}

// A key is bound to its request: reused for another one it is a conflict,
// and the other request's work is not skipped silently.
func TestIdempotencyKeyBoundToRequest(t *testing.T) {
	c := newIdempotencyCache(time.Hour)
	if _, err := c.Do("k", idemFingerprint("migrate", "vm-a", "host-b"), func() (any, error) { return "a", nil }); err != nil {
		t.Fatal(err)
	}
	ran := false
	_, err := c.Do("k", idemFingerprint("migrate", "vm-b", "host-b"), func() (any, error) { ran = true; return "b", nil })
	if !api.IsCode(err, api.CodeConflict) || ran {
		t.Fatalf("same key, other request: err %v, ran %v; want a conflict and no work", err, ran)
	}
	// A failed run is not remembered: the retry runs.
	boom := errors.New("boom")
	if _, err := c.Do("f", "fp", func() (any, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if v, err := c.Do("f", "fp", func() (any, error) { return "ok", nil }); err != nil || v != "ok" {
		t.Fatalf("retry after failure: %v %v", v, err)
	}
}

func TestIdempotencyBounds(t *testing.T) {
	c := newIdempotencyCache(time.Hour)
	c.max = 10
	for _, bad := range []string{strings.Repeat("k", 129), "a b", "k\x00", "ключ"} {
		if _, err := c.Do(bad, "fp", func() (any, error) { return 1, nil }); !api.IsCode(err, api.CodeInvalid) {
			t.Errorf("key %q: %v, want invalid", bad, err)
		}
	}
	for i := range 100 {
		if _, err := c.Do(fmt.Sprintf("key-%d", i), "fp", func() (any, error) { return i, nil }); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(c.m); n > 10 {
		t.Fatalf("cache holds %d entries, bound is 10", n)
	}
	// The newest survive eviction.
	if v, _ := c.Do("key-99", "fp", func() (any, error) { return -1, nil }); v != 99 {
		t.Fatalf("newest entry evicted: %v", v)
	}
	// Expired entries go.
	c.ttl = time.Nanosecond
	time.Sleep(time.Millisecond)
	c.Do("fresh", "fp", func() (any, error) { return 0, nil })
	if n := len(c.m); n != 1 {
		t.Fatalf("%d entries after expiry, want 1", n)
	}
}
