package kvm

import "testing"

func TestParseIDs(t *testing.T) {
	h, p, n, err := ParseDiskID("host-a/default/web-1")
	if err != nil || h != "host-a" || p != "default" || n != "web-1" {
		t.Fatalf("ParseDiskID = %q %q %q %v", h, p, n, err)
	}
	if _, _, _, err := ParseDiskID("host-a/web-1"); err == nil {
		t.Fatal("ParseDiskID accepted 2 parts")
	}
	if _, _, err := ParseVMID("host-a//"); err == nil {
		t.Fatal("ParseVMID accepted empty parts")
	}
	if h, v, s, err := ParseSnapshotID("h/vm/s"); err != nil || h != "h" || v != "vm" || s != "s" {
		t.Fatalf("ParseSnapshotID = %q %q %q %v", h, v, s, err)
	}
}
