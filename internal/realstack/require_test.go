package realstack

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestRequireFailsWhenRequested runs a real-stack gate in a child test
// process under different environments: it skips only when nobody asked for
// the real stack, and fails, with the reason, when KVM_TEST_REALSTACK=1 or
// CI=true did.
func TestRequireFailsWhenRequested(t *testing.T) {
	if os.Getenv("REALSTACK_GATE_CHILD") == "1" {
		// A tool that exists nowhere: the gate can never pass.
		Require(t, "no-such-tool-kvm-test")
		t.Log("gate passed")
		return
	}
	for _, c := range []struct {
		env      []string
		wantFail bool
	}{
		{[]string{"KVM_TEST_REALSTACK=", "CI="}, false},
		{[]string{"KVM_TEST_REALSTACK=1", "CI="}, true},
		{[]string{"KVM_TEST_REALSTACK=", "CI=true"}, true},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestRequireFailsWhenRequested$", "-test.v")
		cmd.Env = append(os.Environ(), append([]string{"REALSTACK_GATE_CHILD=1"}, c.env...)...)
		out, err := cmd.CombinedOutput()
		failed := err != nil
		switch {
		case failed != c.wantFail:
			t.Errorf("%v: failed=%v, want %v:\n%s", c.env, failed, c.wantFail, out)
		case !c.wantFail && !strings.Contains(string(out), "--- SKIP") || !strings.Contains(string(out), SkipPrefix):
			t.Errorf("%v: want a skip (or failure) naming %q:\n%s", c.env, SkipPrefix, out)
		case c.wantFail && !strings.Contains(string(out), "the real stack was requested"):
			t.Errorf("%v: the failure does not say why:\n%s", c.env, out)
		}
	}
}
