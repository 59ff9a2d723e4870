package service_test

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// TestReservations covers the target side of a migration's admission on a
// host with 3072 MiB (memory_overcommit 1): a reservation is admitted like
// a create and counts in the allocation until released or expired; of
// two reservations racing for the last slot exactly one wins; a VM that
// arrives under its reservation is not counted twice.
func TestReservations(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kvm-hostd process")
	}
	c := harness.Start(t, harness.Options{
		Hosts:     []string{"rsv"},
		ExtraArgs: []string{"--memory-overcommit", "1", "--cpu-overcommit", "4"},
	})
	cl, err := client.New(client.Options{Endpoint: c.Hosts[0].URL, Token: c.Token, RetryMax: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h0, err := cl.Host(ctx)
	if err != nil {
		t.Fatal(err)
	}
	capMem := int64(float64(h0.MemoryMiB) * h0.MemoryOvercommit)
	if capMem != 3072 || h0.AllocatedMemoryMiB != 0 {
		t.Fatalf("test needs an empty 3072 MiB host: %+v", h0)
	}
	allocated := func() int64 {
		t.Helper()
		h, err := cl.Host(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return h.AllocatedMemoryMiB
	}

	// A reservation counts in the allocation and refuses what no longer fits.
	r, err := cl.PutReservation(ctx, "in-1", api.ReservationSpec{VCPU: 1, MemoryMiB: 2048, SourceHost: "src"})
	if err != nil || r.Kind != "incoming" || r.ExpiresAt == nil || time.Until(*r.ExpiresAt) < 10*time.Minute {
		t.Fatalf("reserve 2048 MiB: %+v, %v", r, err)
	}
	if got := allocated(); got != 2048 {
		t.Errorf("allocated %d MiB with a 2048 MiB reservation, want 2048", got)
	}
	_, err = cl.PutVM(ctx, "big", api.VMSpec{VCPU: 1, MemoryMiB: 1536})
	if !api.IsCode(err, api.CodeFull) || !strings.Contains(err.Error(), "only 1024 of 3072 MiB are free") || !strings.Contains(err.Error(), "2048 MiB reserved") {
		t.Errorf("create beyond a reservation: %v, want 409 full counting the reservation", err)
	} else {
		t.Logf("create refused: %v", err)
	}
	_, err = cl.PutReservation(ctx, "in-2", api.ReservationSpec{VCPU: 1, MemoryMiB: 1536})
	if !api.IsCode(err, api.CodeFull) || !strings.Contains(err.Error(), "host rsv is full: VM in-2 needs 1536 MiB") {
		t.Errorf("reservation beyond capacity: %v, want 409 full naming the host", err)
	} else {
		t.Logf("reservation refused: %v", err)
	}

	// Two reservations race for the last 1024 MiB, five rounds: exactly
	// one wins each time.
	for round := range 5 {
		names := []string{fmt.Sprintf("race-%d-a", round), fmt.Sprintf("race-%d-b", round)}
		errs := make([]error, 2)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, errs[i] = cl.PutReservation(ctx, names[i], api.ReservationSpec{VCPU: 1, MemoryMiB: 1024})
			}()
		}
		close(start)
		wg.Wait()
		var winner string
		for i, err := range errs {
			switch {
			case err == nil:
				if winner != "" {
					t.Errorf("round %d: both reservations won", round)
				}
				winner = names[i]
			case !api.IsCode(err, api.CodeFull):
				t.Errorf("round %d: %s: %v, want success or 409 full", round, names[i], err)
			}
		}
		if got := allocated(); got != capMem {
			t.Errorf("round %d: allocated %d MiB, want %d", round, got, capMem)
		}
		if winner == "" {
			t.Fatalf("round %d: neither reservation won: %v", round, errs)
		}
		if err := cl.DeleteReservation(ctx, winner); err != nil {
			t.Fatal(err)
		}
	}

	// Reserving again replaces; releasing frees; a second release is a 404.
	if _, err := cl.PutReservation(ctx, "in-1", api.ReservationSpec{VCPU: 1, MemoryMiB: 512}); err != nil {
		t.Fatal(err)
	}
	if got := allocated(); got != 512 {
		t.Errorf("allocated %d MiB after shrinking the reservation to 512, want 512", got)
	}
	if err := cl.DeleteReservation(ctx, "in-1"); err != nil {
		t.Fatal(err)
	}
	if err := cl.DeleteReservation(ctx, "in-1"); !api.IsNotFound(err) {
		t.Errorf("second release: %v, want 404", err)
	}
	if got := allocated(); got != 0 {
		t.Errorf("allocated %d MiB after release, want 0", got)
	}

	// A VM arriving under its reservation counts once: with the host
	// otherwise full, the reserved VM is defined and the allocation is
	// the reservation, not twice it.
	if _, err := cl.PutReservation(ctx, "arrive", api.ReservationSpec{VCPU: 1, MemoryMiB: 1024}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.PutVM(ctx, "filler", api.VMSpec{VCPU: 1, MemoryMiB: 2048}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.PutVM(ctx, "arrive", api.VMSpec{VCPU: 1, MemoryMiB: 1024}); err != nil {
		t.Fatalf("the reserved VM itself: %v", err)
	}
	if got := allocated(); got != capMem {
		t.Errorf("allocated %d MiB with the reserved VM defined, want %d", got, capMem)
	}
	if _, err := cl.PutReservation(ctx, "filler", api.ReservationSpec{VCPU: 1, MemoryMiB: 64}); !api.IsCode(err, api.CodeConflict) {
		t.Errorf("reserve for a VM that is here: %v, want 409 conflict", err)
	}
	if err := cl.DeleteReservation(ctx, "arrive"); err != nil {
		t.Fatal(err)
	}
	if got := allocated(); got != capMem {
		t.Errorf("allocated %d MiB after releasing the arrived VM's reservation, want %d", got, capMem)
	}
	if err := cl.DeleteVM(ctx, "filler", 0); err != nil {
		t.Fatal(err)
	}

	// A reservation nobody releases expires.
	if _, err := cl.PutReservation(ctx, "lost", api.ReservationSpec{VCPU: 1, MemoryMiB: 1024, TTLSec: 1}); err != nil {
		t.Fatal(err)
	}
	if got := allocated(); got != 2048 {
		t.Errorf("allocated %d MiB with a 1 s reservation, want 2048", got)
	}
	time.Sleep(1500 * time.Millisecond)
	if got := allocated(); got != 1024 {
		t.Errorf("allocated %d MiB after the reservation expired, want 1024", got)
	}
	if l, err := cl.ListReservations(ctx); err != nil || len(l) != 0 {
		t.Errorf("ledger after expiry: %+v, %v; want empty", l, err)
	}
	// Out-of-range TTLs are refused before they become a duration: a
	// count that overflows time.Duration must not turn into a reservation
	// that never expires (or one that is already gone).
	for _, ttl := range []int64{api.MaxReservationTTLSec + 1, -1, 9223372036, 9223372037, math.MaxInt64, math.MinInt64} {
		_, err := cl.PutReservation(ctx, "bad", api.ReservationSpec{VCPU: 1, MemoryMiB: 64, TTLSec: ttl})
		if !api.IsCode(err, api.CodeInvalid) || !strings.Contains(err.Error(), "ttl_sec") {
			t.Errorf("ttl_sec %d: %v, want 400 naming ttl_sec", ttl, err)
		}
	}
	if l, err := cl.ListReservations(ctx); err != nil || len(l) != 0 {
		t.Errorf("ledger after refused TTLs: %+v, %v; want empty", l, err)
	}
	// 0 (absent) is the default lifetime.
	r, err = cl.PutReservation(ctx, "dflt", api.ReservationSpec{VCPU: 1, MemoryMiB: 64})
	if err != nil {
		t.Fatal(err)
	}
	if left := time.Until(*r.ExpiresAt); left < 14*time.Minute || left > 15*time.Minute+time.Second {
		t.Errorf("default reservation expires in %v, want 15 min", left)
	}
	if err := cl.DeleteReservation(ctx, "dflt"); err != nil {
		t.Fatal(err)
	}
}
