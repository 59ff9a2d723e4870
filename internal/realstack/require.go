package realstack

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// SkipPrefix starts the message of every real-stack test that does not run. The
// test report (internal/testreport) recognises skipped real-stack tests by it.
const SkipPrefix = "real-stack test: "

// Environment variables the real-stack tests read; scripts/test.sh sets them.
const (
	// RequestEnv=1 asks for the real-stack tests (root, libvirt, Open vSwitch).
	RequestEnv = "KVM_TEST_REALSTACK"
	// LibvirtURIEnv names the libvirt the tests use (qemu:///system).
	LibvirtURIEnv = "KVM_TEST_LIBVIRT_URI"
	// OVSDBEnv names the Open vSwitch the tests use (unix:/run/openvswitch/db.sock),
	// or "embedded" to pair a real libvirt with kvm-hostd's in-memory OVSDB.
	OVSDBEnv = "KVM_TEST_OVSDB"
)

// Requested reports whether this run asked for the real stack: KVM_TEST_REALSTACK=1
// (make test sets it) or CI=true. A real-stack test that cannot run then fails
// instead of skipping, so a green run proves the real stack ran.
func Requested() bool {
	return os.Getenv(RequestEnv) == "1" || CI()
}

// CI reports whether the environment says this is a CI run (CI=true, as most CI
// systems set it).
func CI() bool {
	switch strings.ToLower(os.Getenv("CI")) {
	case "true", "1", "yes":
		return true
	}
	return false
}

// Unavailable stops a real-stack test that cannot run here: it fails the test when
// the real stack was requested (see Requested) and skips it otherwise. It is the
// only way a real-stack test may be skipped.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Requested() {
		t.Fatalf("%scannot run although the real stack was requested (%s=1 or CI=true): %s", SkipPrefix, RequestEnv, msg)
	}
	t.Skip(SkipPrefix + msg)
}

// Require stops the test (see Unavailable) unless the real stack was requested with
// KVM_TEST_REALSTACK=1, the test runs as root, and every tool is installed.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	if os.Getenv(RequestEnv) != "1" {
		Unavailable(t, "set %s=1 (make test does)", RequestEnv)
	}
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			Unavailable(t, "%s not installed (scripts/install-deps.sh)", tool)
		}
	}
}

// RequireLibvirtURI returns KVM_TEST_LIBVIRT_URI or stops the test (see Unavailable).
func RequireLibvirtURI(t testing.TB) string {
	t.Helper()
	uri := os.Getenv(LibvirtURIEnv)
	if uri == "" {
		Unavailable(t, "set %s=qemu:///system (make test does)", LibvirtURIEnv)
	}
	return uri
}

// RequireOVSDB returns KVM_TEST_OVSDB or stops the test (see Unavailable).
func RequireOVSDB(t testing.TB) string {
	t.Helper()
	ep := os.Getenv(OVSDBEnv)
	if ep == "" {
		Unavailable(t, "set %s to an Open vSwitch endpoint, e.g. unix:/run/openvswitch/db.sock (make test does)", OVSDBEnv)
	}
	return ep
}
