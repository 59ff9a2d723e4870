package api

import "testing"

func TestCodeStatusRoundTrip(t *testing.T) {
	for _, cs := range codeStatus {
		if got := StatusForCode(cs.code); got != cs.status {
			t.Errorf("StatusForCode(%s) = %d, want %d", cs.code, got, cs.status)
		}
		if got := StatusForCode(CodeForStatus(cs.status)); got != cs.status {
			t.Errorf("status %d does not round-trip: %d", cs.status, got)
		}
	}
	if StatusForCode("bogus") != 500 || CodeForStatus(418) != CodeInternal {
		t.Error("unknown codes and statuses must map to internal/500")
	}
}
