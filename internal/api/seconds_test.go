package api

import (
	"math"
	"strings"
	"testing"
	"time"
)

// Counts of seconds are bounded before they are multiplied into a
// duration: the values just past the overflow point are refused, not
// wrapped into a negative or tiny duration.
func TestReservationTTLBounds(t *testing.T) {
	for _, c := range []struct {
		sec  int64
		want time.Duration
		ok   bool
	}{
		{0, 15 * time.Minute, true}, // absent: the default
		{1, time.Second, true},
		{MaxReservationTTLSec, 24 * time.Hour, true},
		{MaxReservationTTLSec + 1, 0, false},
		{-1, 0, false},
		{math.MinInt64, 0, false},
		{9223372036, 0, false}, // the last count that still fits
		{9223372037, 0, false}, // the first that wraps to a negative duration
		{math.MaxInt64, 0, false},
	} {
		got, err := ReservationTTL(c.sec)
		if c.ok {
			if err != nil || got != c.want {
				t.Errorf("ReservationTTL(%d) = %v, %v; want %v", c.sec, got, err, c.want)
			}
			continue
		}
		if !IsCode(err, CodeInvalid) || !strings.Contains(err.Error(), "ttl_sec") || !strings.Contains(err.Error(), "1..86400") {
			t.Errorf("ReservationTTL(%d) = %v, %v; want an invalid error naming ttl_sec and its range", c.sec, got, err)
		}
	}
}

func TestSeconds(t *testing.T) {
	if d, err := Seconds("shutdown_timeout", 0, 0, MaxShutdownTimeoutSec); err != nil || d != 0 {
		t.Errorf("0: %v %v", d, err)
	}
	if d, err := Seconds("shutdown_timeout", MaxShutdownTimeoutSec, 0, MaxShutdownTimeoutSec); err != nil || d != time.Hour {
		t.Errorf("max: %v %v", d, err)
	}
	for _, n := range []int64{-1, MaxShutdownTimeoutSec + 1, 9223372037, math.MaxInt64, math.MinInt64} {
		if d, err := Seconds("shutdown_timeout", n, 0, MaxShutdownTimeoutSec); !IsCode(err, CodeInvalid) || d != 0 {
			t.Errorf("%d: %v %v, want invalid", n, d, err)
		}
	}
}
