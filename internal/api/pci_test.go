package api

import "testing"

func TestCanonicalPCIAddress(t *testing.T) {
	for in, want := range map[string]string{"0000:01:00.0": "0000:01:00.0", "0000:3B:1f.7": "0000:3b:1f.7", "ABCD:ff:00.1": "abcd:ff:00.1"} {
		if got, err := CanonicalPCIAddress(in); err != nil || got != want {
			t.Errorf("%s: %q, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "01:00.0", "0000:01:00", "0000:01:20.0", "0000:01:00.8", "0000:1:00.0", " 0000:01:00.0", "0000-01-00.0"} {
		if _, err := CanonicalPCIAddress(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if a := PCIAddress(1, 59, 31, 7); a != "0001:3b:1f.7" {
		t.Errorf("PCIAddress: %s", a)
	}
	if err := ValidatePCIDeviceNames([]string{"gpu0", "nic.1"}); err != nil {
		t.Error(err)
	}
	for _, bad := range [][]string{{"gpu0", "gpu0"}, {""}, {"a/b"}} {
		if err := ValidatePCIDeviceNames(bad); !IsCode(err, CodeInvalid) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}
