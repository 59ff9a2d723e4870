package server

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// Counts of seconds in requests are bounded before they become durations,
// at every entry point: a reservation's ttl_sec and DELETE's
// shutdown_timeout.
func TestSecondsBoundedAtTheAPI(t *testing.T) {
	s, _ := authTestServer(t)
	do := func(method, path, body string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+matrixToken)
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		return rec
	}
	for _, ttl := range []string{"-1", "86401", "9223372036", "9223372037", "9223372036854775807"} {
		rec := do("PUT", "/v1/reservations/ttl-vm", `{"vcpu":1,"memory_mib":64,"ttl_sec":`+ttl+`}`)
		if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "ttl_sec") {
			t.Errorf("ttl_sec %s: %d %s, want 400 naming ttl_sec", ttl, rec.Code, rec.Body)
		}
	}
	if rec := do("GET", "/v1/reservations", ""); strings.Contains(rec.Body.String(), "ttl-vm") {
		t.Errorf("a refused reservation is in the ledger: %s", rec.Body)
	}
	for _, q := range []string{"-1", "3601", "9223372037", "9223372036854775807", "99999999999999999999"} {
		rec := do("DELETE", "/v1/vms/no-such-vm?shutdown_timeout="+q, "")
		if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "shutdown_timeout") {
			t.Errorf("shutdown_timeout %s: %d %s, want 400", q, rec.Code, rec.Body)
		}
	}
}
