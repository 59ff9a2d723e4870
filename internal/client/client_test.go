package client

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

func fastClient(t *testing.T, url string) *Client {
	t.Helper()
	c, err := New(Options{Endpoint: url, Token: "t", RetryMax: 4, RetryWaitMin: time.Millisecond, RetryWaitMax: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func writeErr(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(api.Error{Code: code, Message: msg})
}

func TestGetRetriesThroughTwo503s(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if got := r.Header.Get("Authorization"); got != "Bearer t" {
			t.Errorf("Authorization = %q", got)
		}
		if calls.Add(1) <= 2 {
			writeErr(w, http.StatusServiceUnavailable, api.CodeUnavailable, "libvirt restarting")
			return
		}
		_ = json.NewEncoder(w).Encode(api.Host{Name: "host-a", CPUs: 4, Healthy: true})
	}))
	defer srv.Close()
	h, err := fastClient(t, srv.URL).Host(context.Background())
	if err != nil {
		t.Fatalf("Host: %v", err)
	}
	if h.Name != "host-a" || h.CPUs != 4 {
		t.Fatalf("Host = %+v", h)
	}
	if n := calls.Load(); n != 3 {
		t.Fatalf("server saw %d calls, want 3 (two 503s, then success)", n)
	}
}

func TestPOSTWithoutIdempotencyKeyIsNotRetried(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		writeErr(w, http.StatusServiceUnavailable, api.CodeUnavailable, "busy")
	}))
	defer srv.Close()
	c := fastClient(t, srv.URL)
	_, err := c.do(context.Background(), http.MethodPost, "/vms/x/migrate", nil, api.MigrateRequest{}, nil)
	if err == nil {
		t.Fatal("want error")
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("POST without Idempotency-Key was sent %d times, want 1", n)
	}
	// With a key, the same POST is retried.
	calls.Store(0)
	_, _ = c.do(WithIdempotencyKey(context.Background(), "k1"), http.MethodPost, "/vms/x/migrate", nil, api.MigrateRequest{}, nil)
	if n := calls.Load(); n != 5 {
		t.Fatalf("POST with Idempotency-Key was sent %d times, want 5 (1 + 4 retries)", n)
	}
}

func TestGivingUpKeepsServerMessage(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusInternalServerError, api.CodeInternal, "libvirt: disk on fire")
	}))
	defer srv.Close()
	_, err := fastClient(t, srv.URL).GetVM(context.Background(), "web-1")
	var e *api.Error
	if !errors.As(err, &e) || e.Status != 500 || !strings.Contains(e.Message, "disk on fire") {
		t.Fatalf("err = %#v, want the server's message with status 500", err)
	}
}

func TestNoRetryOn4xxAnd501(t *testing.T) {
	for _, status := range []int{400, 401, 404, 409, 501} {
		var calls atomic.Int32
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			writeErr(w, status, "x", "no")
		}))
		_, err := fastClient(t, srv.URL).GetVM(context.Background(), "a")
		srv.Close()
		if err == nil || StatusOf(err) != status {
			t.Errorf("status %d: err = %v", status, err)
		}
		if calls.Load() != 1 {
			t.Errorf("status %d retried: %d calls", status, calls.Load())
		}
	}
}

func TestRetryOn429HonoursCappedRetryAfter(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			w.Header().Set("Retry-After", "3600")
			writeErr(w, http.StatusTooManyRequests, api.CodeTooMany, "slow down")
			return
		}
		_ = json.NewEncoder(w).Encode(api.Host{Name: "h"})
	}))
	defer srv.Close()
	c, _ := New(Options{Endpoint: srv.URL, RetryWaitMin: time.Millisecond, RetryWaitMax: 5 * time.Millisecond, MaxRetryAfter: 50 * time.Millisecond})
	start := time.Now()
	if _, err := c.Host(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Retry-After was not capped: waited %v", d)
	}
}

func TestContextDeadlineStopsRetries(t *testing.T) {
	// A port nobody listens on: connection refused on every attempt.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c, _ := New(Options{Endpoint: "http://" + addr, RetryMax: 100, RetryWaitMin: 50 * time.Millisecond, RetryWaitMax: 100 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := c.Host(ctx); err == nil {
		t.Fatal("want error")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("retries outlived the context deadline: %v", d)
	}
}

func TestParseEndpoint(t *testing.T) {
	for _, good := range []string{"http://127.0.0.1:7701", "https://10.0.0.11:7443/", "https://host.example"} {
		if _, err := ParseEndpoint(good); err != nil {
			t.Errorf("ParseEndpoint(%q) = %v", good, err)
		}
	}
	for _, bad := range []string{"", "127.0.0.1:7701", "ftp://x", "http://", "http://u:p@h", "http://h/v1", "http://h?x=1"} {
		if _, err := ParseEndpoint(bad); err == nil {
			t.Errorf("ParseEndpoint(%q) = nil, want error", bad)
		}
	}
}

func TestJitterBackoffBounds(t *testing.T) {
	b := JitterBackoff(time.Second)
	for attempt := 0; attempt < 10; attempt++ {
		d := b(100*time.Millisecond, time.Second, attempt, nil)
		if d < 50*time.Millisecond || d > time.Second {
			t.Fatalf("attempt %d: backoff %v out of [50ms, 1s]", attempt, d)
		}
	}
}

// A server's Retry-After is capped before it becomes a duration: a count
// of seconds past time.Duration's range must not wrap into a negative
// wait (an immediate retry storm).
func TestRetryAfterCapped(t *testing.T) {
	b := JitterBackoff(30 * time.Second)
	for _, c := range []struct {
		header string
		want   time.Duration
	}{
		{"5", 5 * time.Second},
		{"30", 30 * time.Second},
		{"31", 30 * time.Second},
		{"9223372037", 30 * time.Second},
		{"9223372036854775807", 30 * time.Second},
	} {
		resp := &http.Response{StatusCode: http.StatusServiceUnavailable, Header: http.Header{"Retry-After": {c.header}}}
		if d := b(time.Second, time.Minute, 0, resp); d != c.want {
			t.Errorf("Retry-After %s: waits %v, want %v", c.header, d, c.want)
		}
	}
}
