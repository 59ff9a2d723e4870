package harness

import (
	"strings"
	"testing"
)

// A cluster on a real libvirt never gets the embedded OVSDB unless asked
// for it: without an OVSDB it is refused before anything starts.
func TestRealLibvirtNeedsAnOVSDB(t *testing.T) {
	_, err := StartCluster(Options{Hosts: []string{"h"}, LibvirtURI: "qemu:///system"})
	if err == nil || !strings.Contains(err.Error(), "needs an OVSDB") {
		t.Fatalf("StartCluster on qemu:///system without OVSDB: %v, want a refusal", err)
	}
}

// RealOptions takes KVM_TEST_OVSDB as it is, "embedded" only when set so.
func TestRealOptionsTakesTheOVSDBAskedFor(t *testing.T) {
	t.Setenv("KVM_TEST_LIBVIRT_URI", "qemu:///system")
	for _, ovsdb := range []string{"unix:/run/openvswitch/db.sock", "embedded"} {
		t.Setenv("KVM_TEST_OVSDB", ovsdb)
		if o := RealOptions(t, Options{}); o.OVSDB != ovsdb || o.LibvirtURI != "qemu:///system" {
			t.Errorf("KVM_TEST_OVSDB=%s: options %+v", ovsdb, o)
		}
	}
}
