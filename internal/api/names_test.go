package api

import (
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	good := []string{"a", "web-1", "disk_0.qcow2", "A9", strings.Repeat("x", MaxNameLength)}
	for _, n := range good {
		if err := ValidateName("vm", n); err != nil {
			t.Errorf("ValidateName(%q) = %v, want nil", n, err)
		}
	}
	bad := []string{"", "../x</name>", "a/b", "..", "a..b", ".hidden", "-x", "a b", "a\x00b", "a\nb",
		"x<y", "x&y", `x"y`, "x'y", strings.Repeat("x", 300), "é"}
	for _, n := range bad {
		if err := ValidateName("vm", n); err == nil {
			t.Errorf("ValidateName(%q) = nil, want error", n)
		}
	}
}
