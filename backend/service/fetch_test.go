package service

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestFetcherPolicy checks the one outbound HTTP policy against a real
// HTTP server: the size cap, credentials never following a redirect,
// redaction of user-info and query strings, remote bodies kept out of
// errors, the idle timeout and cancellation.
func TestFetcherPolicy(t *testing.T) {
	var authAfterRedirect atomic.Value
	authAfterRedirect.Store("")
	mux := http.NewServeMux()
	mux.HandleFunc("/small", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, strings.Repeat("x", 100))
	})
	mux.HandleFunc("/big-declared", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		_, _ = io.WriteString(w, strings.Repeat("x", 1000))
	})
	mux.HandleFunc("/big-chunked", func(w http.ResponseWriter, r *http.Request) {
		for range 10 {
			_, _ = io.WriteString(w, strings.Repeat("x", 100))
			w.(http.Flusher).Flush()
		}
	})
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/landing", http.StatusFound)
	})
	mux.HandleFunc("/landing", func(w http.ResponseWriter, r *http.Request) {
		authAfterRedirect.Store(r.Header.Get("Authorization"))
		_, _ = io.WriteString(w, "ok")
	})
	mux.HandleFunc("/secret-error", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "REMOTE-BODY-SECRET", http.StatusForbidden)
	})
	mux.HandleFunc("/stall", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		_, _ = io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	f := &Fetcher{MaxBytes: 500, IdleTimeout: 300 * time.Millisecond}
	ctx := context.Background()

	read := func(path, token string) (string, error) {
		body, _, err := f.Get(ctx, srv.URL+path, token)
		if err != nil {
			return "", err
		}
		defer body.Close()
		b, err := io.ReadAll(body)
		return string(b), err
	}

	if got, err := read("/small", ""); err != nil || len(got) != 100 {
		t.Fatalf("small: %d bytes, %v", len(got), err)
	}
	if _, err := read("/big-declared", ""); err == nil || !strings.Contains(err.Error(), "limit of 500 bytes") {
		t.Errorf("declared 1000 bytes over a 500-byte cap: %v", err)
	}
	if got, err := read("/big-chunked", ""); err == nil || !strings.Contains(err.Error(), "limit of 500 bytes") || len(got) > 500 {
		t.Errorf("undeclared 1000 bytes over a 500-byte cap: read %d, %v", len(got), err)
	}

	if got, err := read("/redirect", "tok-123"); err != nil || got != "ok" {
		t.Fatalf("redirect: %q, %v", got, err)
	}
	if a := authAfterRedirect.Load().(string); a != "" {
		t.Errorf("the token followed a same-host redirect: %q", a)
	}

	_, err := read("/secret-error?sig=QUERY-SECRET", "")
	if err == nil {
		t.Fatal("403: no error")
	}
	for _, leak := range []string{"REMOTE-BODY-SECRET", "QUERY-SECRET"} {
		if strings.Contains(err.Error(), leak) {
			t.Errorf("error leaks %s: %v", leak, err)
		}
	}
	if !strings.Contains(err.Error(), "403") {
		t.Errorf("error does not name the status: %v", err)
	}
	u := strings.Replace(srv.URL, "http://", "http://user:PASS-SECRET@", 1)
	if _, _, err := f.Get(ctx, u+"/small", ""); err == nil || strings.Contains(err.Error(), "PASS-SECRET") {
		t.Errorf("URL with credentials: %v", err)
	}
	if _, _, err := f.Get(ctx, "http://127.0.0.1:1/x?token=QUERY-SECRET", ""); err == nil || strings.Contains(err.Error(), "QUERY-SECRET") {
		t.Errorf("connection refused: %v", err)
	}

	t0 := time.Now()
	if _, err := read("/stall", ""); !errors.Is(err, errTimeout) {
		t.Errorf("stalled body: %v", err)
	}
	if d := time.Since(t0); d > 3*time.Second {
		t.Errorf("stall detected after %v, idle timeout 300ms", d)
	}

	f.IdleTimeout = time.Hour
	cctx, cancel := context.WithCancel(ctx)
	body, _, err := f.Get(cctx, srv.URL+"/stall", "")
	if err != nil {
		t.Fatal(err)
	}
	go func() { time.Sleep(100 * time.Millisecond); cancel() }()
	if _, err := io.ReadAll(body); err == nil {
		t.Error("cancelled transfer: no error")
	}
	body.Close()

	var checked []string
	g := &Fetcher{CheckAddr: func(network, address string) error {
		checked = append(checked, address)
		return errors.New("refused by the allow-list")
	}}
	if _, _, err := g.Get(ctx, srv.URL+"/small", ""); err == nil || !strings.Contains(err.Error(), "refused by the allow-list") || len(checked) == 0 {
		t.Errorf("CheckAddr hook: %v, checked %v", err, checked)
	}
}
