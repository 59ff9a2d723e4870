package server

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

const (
	matrixToken     = "full-token-0123456789"
	matrixReadToken = "read-token-0123456789"
)

// authTestServer is a server with both tokens and an audit log, on
// libvirt's test driver and the embedded OVSDB.
func authTestServer(t *testing.T) (*Server, string) {
	t.Helper()
	svc := testService(t, "auth")
	auditPath := filepath.Join(t.TempDir(), "audit.log")
	audit, err := OpenAuditLog(auditPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = audit.Close() })
	return New(svc, Options{Token: matrixToken, ReadToken: matrixReadToken, Audit: audit, Log: slog.New(slog.DiscardHandler)}), auditPath
}

func send(h http.Handler, method, path, token string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

var pathParam = regexp.MustCompile(`\{[^}]+\}`)

// Every registered route, with every method a client can send, against no
// token, the read-only token and the full token: without a valid token
// everything under /v1 is 401; the read token gets 403 for anything but a
// GET or HEAD of a route open to it; the full token is never refused. The
// objects named do not exist, so nothing is changed by the full-token
// requests (they end in 400 or 404).
func TestAuthMatrix(t *testing.T) {
	s, _ := authTestServer(t)
	if len(s.table) < 20 {
		t.Fatalf("only %d routes registered", len(s.table))
	}
	// Which methods each concrete path serves.
	served := map[string]map[string]route{}
	for _, rt := range s.table {
		p := pathParam.ReplaceAllString(rt.pattern, "matrix-x")
		if served[p] == nil {
			served[p] = map[string]route{}
		}
		served[p][rt.method] = rt
		if rt.method == http.MethodGet {
			// The mux serves HEAD with the GET handler.
			served[p][http.MethodHead] = rt
		}
	}
	methods := []string{"GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS", "TRACE", "FOO"}
	for p, byMethod := range served {
		for _, m := range methods {
			rt, routed := byMethod[m]
			if rec := send(s, m, p, ""); rec.Code != http.StatusUnauthorized {
				t.Errorf("%s %s without a token: %d, want 401", m, p, rec.Code)
			}
			if rec := send(s, m, p, "wrong-token-0123456789"); rec.Code != http.StatusUnauthorized {
				t.Errorf("%s %s with a wrong token: %d, want 401", m, p, rec.Code)
			}
			rec := send(s, m, p, matrixReadToken)
			readAllowed := routed && (m == http.MethodGet || m == http.MethodHead) && !rt.fullTokenOnly
			switch {
			case readAllowed && (rec.Code == http.StatusUnauthorized || rec.Code == http.StatusForbidden):
				t.Errorf("%s %s with the read token: %d, want it allowed", m, p, rec.Code)
			case !readAllowed && rec.Code != http.StatusForbidden && !(m == http.MethodGet || m == http.MethodHead):
				t.Errorf("%s %s with the read token: %d, want 403", m, p, rec.Code)
			case !readAllowed && routed && rec.Code != http.StatusForbidden:
				t.Errorf("%s %s (full token only) with the read token: %d, want 403", m, p, rec.Code)
			case !readAllowed && !routed && rec.Code/100 == 2:
				t.Errorf("%s %s (no such route) with the read token: %d", m, p, rec.Code)
			}
			rec = send(s, m, p, matrixToken)
			switch {
			case rec.Code == http.StatusUnauthorized || rec.Code == http.StatusForbidden:
				t.Errorf("%s %s with the full token: %d %s", m, p, rec.Code, rec.Body)
			case !routed && rec.Code != http.StatusNotFound:
				t.Errorf("%s %s (no such route) with the full token: %d, want 404", m, p, rec.Code)
			}
		}
	}
}

// A volume's bytes need the full token, by GET or HEAD, and every attempt
// is in the audit log, refused or not.
func TestVolumeContentNeedsFullToken(t *testing.T) {
	s, auditPath := authTestServer(t)
	req := httptest.NewRequest("PUT", "/v1/pools/default/volumes/secret-disk", strings.NewReader(`{"size_mib":1}`))
	req.Header.Set("Authorization", "Bearer "+matrixToken)
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	if rec.Code != http.StatusCreated {
		t.Fatalf("PUT: %d %s", rec.Code, rec.Body)
	}
	const p = "/v1/pools/default/volumes/secret-disk/content"
	for _, m := range []string{"GET", "HEAD"} {
		rec := send(s, m, p, matrixReadToken)
		if rec.Code != http.StatusForbidden {
			t.Errorf("%s content with the read token: %d %s, want 403", m, rec.Code, rec.Body)
		}
		if m == "GET" {
			var e api.Error
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Code != api.CodeForbidden || !strings.Contains(e.Message, "full token") {
				t.Errorf("GET content with the read token: %s", rec.Body)
			}
		}
		if rec := send(s, m, p, matrixToken); rec.Code != http.StatusOK {
			t.Errorf("%s content with the full token: %d %s, want 200", m, rec.Code, rec.Body)
		}
		if rec := send(s, m, p, ""); rec.Code != http.StatusUnauthorized {
			t.Errorf("%s content without a token: %d, want 401", m, rec.Code)
		}
	}
	// The rest of the volume stays readable with the read token.
	if rec := send(s, "GET", "/v1/pools/default/volumes/secret-disk", matrixReadToken); rec.Code != http.StatusOK {
		t.Errorf("GET volume with the read token: %d", rec.Code)
	}
	b, err := os.ReadFile(auditPath)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var e AuditEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		if e.Path == p {
			got[e.Method+" "+e.Who+" "+http.StatusText(e.Status)]++
		}
	}
	for _, want := range []string{
		"GET read-token Forbidden", "HEAD read-token Forbidden", "GET token OK", "HEAD token OK",
		"GET anonymous Unauthorized", "HEAD anonymous Unauthorized",
	} {
		if got[want] != 1 {
			t.Errorf("audit log: %d lines %q, want 1 (all: %v)", got[want], want, got)
		}
	}
	// A plain read is not audited; OPTIONS and unknown methods are.
	send(s, "GET", "/v1/host", matrixReadToken)
	send(s, "OPTIONS", "/v1/host", matrixReadToken)
	send(s, "FOO", "/v1/host", matrixToken)
	b, _ = os.ReadFile(auditPath)
	if strings.Contains(string(b), `"method":"GET","path":"/v1/host"`) {
		t.Error("a plain GET was audited")
	}
	for _, want := range []string{`"method":"OPTIONS","path":"/v1/host","status":403`, `"method":"other","path":"/v1/host","status":404`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("audit log lacks %s:\n%s", want, b)
		}
	}
}
