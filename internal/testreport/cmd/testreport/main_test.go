package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestExitStatus runs the built command the way scripts/test.sh does and checks
// that nothing is lost between go test and the verdict.
func TestExitStatus(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "testreport")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	mod := filepath.Join(dir, "m")
	if err := os.MkdirAll(mod, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{
		"go.mod": "module example.test/m\n\ngo 1.21\n",
		"m_test.go": `package m
import ("os"; "testing")
func TestPass(t *testing.T) {}
func TestRealStack(t *testing.T) {
	if os.Getenv("WANT_FAIL") == "1" { t.Fatal("asked to fail") }
	t.Skip("real-stack test: not here")
}
`,
	} {
		if err := os.WriteFile(filepath.Join(mod, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run := func(env []string, args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Dir = mod
		cmd.Env = append(os.Environ(), append([]string{"CI=", "GOFLAGS=-mod=mod"}, env...)...)
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code
	}
	lastLine := func(out string) string {
		lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
		return lines[len(lines)-1]
	}
	goTest := []string{"--", "go", "test", "-json", "-count=1", "."}

	for _, c := range []struct {
		name     string
		env      []string
		args     []string
		wantCode int
		wantLast string
	}{
		{"passing run", nil, goTest, 0, "1 passed, 0 failed, 1 skipped"},
		{"CI=true and a skipped real-stack test", []string{"CI=true"}, goTest, 1, "1 passed, 0 failed, 1 skipped"},
		{"a failing test", []string{"WANT_FAIL=1"}, goTest, 1, "1 passed, 1 failed, 0 skipped"},
		{"go test cannot set up a package", nil, []string{"--", "go", "test", "-json", "./nonexistent"}, 1, "0 passed, 1 failed, 0 skipped"},
		{"the command fails and prints nothing", nil, []string{"--", "false"}, 1, "0 passed, 0 failed, 0 skipped"},
		{"a failing check", nil, append([]string{"-check", "leftovers=echo domain x; exit 1"}, goTest...), 1, "1 passed, 1 failed, 1 skipped"},
		{"a passing check", nil, append([]string{"-check", "leftovers=true"}, goTest...), 0, "2 passed, 0 failed, 1 skipped"},
	} {
		out, code := run(c.env, c.args...)
		if code != c.wantCode || lastLine(out) != c.wantLast {
			t.Errorf("%s: exit %d, last line %q; want %d, %q\n%s", c.name, code, lastLine(out), c.wantCode, c.wantLast, out)
		}
	}
}
