package testreport

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// goTestJSON runs the real `go test -json` on a module made of files, so the
// report is checked against what this Go version really prints.
func goTestJSON(t *testing.T, files map[string]string) ([]byte, error) {
	t.Helper()
	dir := t.TempDir()
	files["go.mod"] = "module example.test/m\n\ngo 1.21\n"
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("go", "test", "-json", "-count=1", "./...")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "CI=", "KVM_TEST_REALSTACK=")
	return cmd.CombinedOutput()
}

func TestReportOfARealRun(t *testing.T) {
	out, goErr := goTestJSON(t, map[string]string{
		"ok/ok_test.go": `package ok
import "testing"
func TestPass(t *testing.T) { t.Run("sub", func(t *testing.T) {}) }
func TestRealSkip(t *testing.T) { t.Skip("real-stack test: set KVM_TEST_REALSTACK=1") }
func TestOtherSkip(t *testing.T) { t.Skip("needs a GPU") }
`,
		"bad/bad_test.go": `package bad
import "testing"
func TestFails(t *testing.T) { t.Log("the detail"); t.Fatal("the reason") }
func TestPasses(t *testing.T) {}
`,
		"broken/broken_test.go": `package broken
import "testing"
func TestX(t *testing.T) { undefinedFunction() }
`,
		"crash/crash_test.go": `package crash
import ("os"; "testing")
func TestMain(m *testing.M) { os.Exit(3) }
func TestY(t *testing.T) {}
`,
	})
	if goErr == nil {
		t.Fatalf("go test passed on failing packages:\n%s", out)
	}
	var progress bytes.Buffer
	rep, err := Read(bytes.NewReader(out), &progress)
	if err != nil {
		t.Fatal(err)
	}
	// TestPass, TestPass/sub, TestPasses.
	if rep.Passed != 3 || rep.Skipped != 2 {
		t.Errorf("passed %d skipped %d, want 3 and 2", rep.Passed, rep.Skipped)
	}
	// TestFails, the build failure, the crash.
	if rep.Failed != 3 {
		t.Errorf("failed %d, want 3: %+v", rep.Failed, rep.Failures)
	}
	var names []string
	for _, f := range rep.Failures {
		names = append(names, f.Name())
	}
	got := strings.Join(names, " ")
	for _, want := range []string{"example.test/m/bad.TestFails", "example.test/m/broken", "example.test/m/crash"} {
		if !strings.Contains(got, want) {
			t.Errorf("failures %q lack %s", got, want)
		}
	}
	for _, f := range rep.Failures {
		switch {
		case f.Test == "TestFails" && (!strings.Contains(f.Output, "the detail") || !strings.Contains(f.Output, "the reason")):
			t.Errorf("TestFails output lacks its log: %q", f.Output)
		case strings.HasSuffix(f.Package, "/broken") && !strings.Contains(f.Output, "undefinedFunction"):
			t.Errorf("build failure output lacks the compiler error: %q", f.Output)
		case strings.HasSuffix(f.Package, "/crash") && !strings.Contains(f.Output, "exit status 3"):
			t.Errorf("crash output: %q", f.Output)
		}
	}
	rs := rep.RealStackSkips()
	if len(rs) != 1 || rs[0].Test != "TestRealSkip" || rs[0].Reason() != "real-stack test: set KVM_TEST_REALSTACK=1" {
		t.Errorf("real-stack skips: %+v", rs)
	}
	if !strings.Contains(progress.String(), "FAIL\texample.test/m/bad") || !strings.Contains(progress.String(), "ok  \texample.test/m/ok") {
		t.Errorf("progress lacks the package lines:\n%s", progress.String())
	}

	var w bytes.Buffer
	rep.Write(&w, rep.Judge(goErr, false))
	lines := strings.Split(strings.TrimRight(w.String(), "\n"), "\n")
	if last := lines[len(lines)-1]; last != "3 passed, 3 failed, 2 skipped" {
		t.Errorf("last line %q\n%s", last, w.String())
	}
	for _, want := range []string{"needs a GPU", "ok.TestRealSkip: real-stack test: set KVM_TEST_REALSTACK=1", "the reason", "undefinedFunction"} {
		if !strings.Contains(w.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, w.String())
		}
	}
}

func TestJudge(t *testing.T) {
	out, goErr := goTestJSON(t, map[string]string{
		"ok/ok_test.go": `package ok
import "testing"
func TestPass(t *testing.T) {}
func TestRealSkip(t *testing.T) { t.Skip("real-stack test: not here") }
`,
	})
	if goErr != nil {
		t.Fatalf("go test: %v\n%s", goErr, out)
	}
	rep, err := Read(bytes.NewReader(out), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if v := rep.Judge(nil, false); len(v) != 0 {
		t.Errorf("a passing run was judged %v", v)
	}
	if v := rep.Judge(nil, true); len(v) != 1 || !strings.Contains(v[0], "real-stack") {
		t.Errorf("with the real stack required, a skipped real-stack test must fail the run: %v", v)
	}
	if v := rep.Judge(errors.New("exit status 1"), false); len(v) != 1 {
		t.Errorf("a failed go test must fail the run even when every test passed: %v", v)
	}
	rep.AddCheck("leftovers", "domain x\n", errors.New("exit status 1"))
	if v := rep.Judge(nil, false); len(v) != 1 || rep.Failed != 1 {
		t.Errorf("a failed check must fail the run: %v (failed %d)", v, rep.Failed)
	}

	empty, err := Read(strings.NewReader(""), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if v := empty.Judge(nil, false); len(v) != 1 || v[0] != "no test ran" {
		t.Errorf("an empty run: %v", v)
	}
	// go's own errors (not JSON) are kept and echoed.
	var progress bytes.Buffer
	stray, _ := Read(strings.NewReader("go: cannot find main module\n"), &progress)
	if len(stray.Stray) != 1 || !strings.Contains(progress.String(), "cannot find main module") {
		t.Errorf("stray lines: %v, progress %q", stray.Stray, progress.String())
	}
}
