// Package testreport reads the event stream of `go test -json` and sums it up for
// make test: the output of every failing test (and of every package that failed
// without a failing test: a build error, a crash, a timeout), the skipped tests
// with their reasons, and a closing line "N passed, N failed, N skipped".
package testreport

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// RealStackSkipPrefix starts the skip message of a real-stack test that did not
// run (internal/realstack.SkipPrefix).
const RealStackSkipPrefix = "real-stack test: "

// event is one line of `go test -json` (cmd/test2json), including the build
// events of Go >= 1.24.
type event struct {
	Time        time.Time
	Action      string
	Package     string
	Test        string
	Output      string
	Elapsed     float64
	ImportPath  string // build-output, build-fail
	FailedBuild string // on a package's fail event: the build that failed
}

// Result is one failed or skipped test, or a failed package or build.
type Result struct {
	Package, Test string
	// Output is the test's output (without === RUN/PAUSE/CONT/NAME lines).
	Output string
}

// Name is "package.Test", or the package (or build) alone.
func (r Result) Name() string {
	if r.Test == "" {
		return r.Package
	}
	return r.Package + "." + r.Test
}

// Reason is the last line the test printed before its --- SKIP/FAIL line.
func (r Result) Reason() string {
	lines := strings.Split(strings.TrimRight(r.Output, "\n"), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if l == "" || strings.HasPrefix(l, "--- ") {
			continue
		}
		// "file_test.go:12: message"
		if _, msg, ok := strings.Cut(l, ": "); ok && strings.Contains(l[:strings.Index(l, ": ")], ".go:") {
			return msg
		}
		return l
	}
	return ""
}

// RealStack reports whether r is a real-stack test that did not run.
func (r Result) RealStack() bool {
	return strings.Contains(r.Output, RealStackSkipPrefix)
}

// Report is the sum of a `go test -json` stream.
type Report struct {
	Passed, Failed, Skipped int
	// Failures are the failed tests, then packages and builds that failed with
	// no failed test to show for it.
	Failures []Result
	Skips    []Result
	// Stray holds lines that were not JSON events (go's own errors).
	Stray []string

	tests       map[string]*strings.Builder // running tests' output
	pkgOut      map[string]*strings.Builder // package-level output
	pkgFailed   map[string]bool             // packages with a failed test
	builds      map[string]*strings.Builder // build output by import path
	buildFailed map[string]bool             // failed builds not yet claimed by a package
}

// Read consumes a `go test -json` stream. Package results ("ok", "FAIL", build
// failures) and stray lines are echoed to progress as they arrive, so a long run
// shows where it is.
func Read(r io.Reader, progress io.Writer) (*Report, error) {
	rep := &Report{
		tests:       map[string]*strings.Builder{},
		pkgOut:      map[string]*strings.Builder{},
		pkgFailed:   map[string]bool{},
		builds:      map[string]*strings.Builder{},
		buildFailed: map[string]bool{},
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 64*1024*1024)
	for sc.Scan() {
		line := sc.Text()
		var e event
		if !strings.HasPrefix(line, "{") || json.Unmarshal([]byte(line), &e) != nil || e.Action == "" {
			if strings.TrimSpace(line) != "" {
				rep.Stray = append(rep.Stray, line)
				fmt.Fprintln(progress, line)
			}
			continue
		}
		rep.add(e, progress)
	}
	if err := sc.Err(); err != nil {
		return rep, err
	}
	// Builds that failed without any package event naming them.
	var paths []string
	for p := range rep.buildFailed {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		rep.Failed++
		rep.Failures = append(rep.Failures, Result{Package: p, Output: rep.builds[p].String()})
	}
	return rep, nil
}

func builder(m map[string]*strings.Builder, k string) *strings.Builder {
	b := m[k]
	if b == nil {
		b = &strings.Builder{}
		m[k] = b
	}
	return b
}

func (rep *Report) add(e event, progress io.Writer) {
	switch e.Action {
	case "build-output":
		builder(rep.builds, e.ImportPath).WriteString(e.Output)
		return
	case "build-fail":
		rep.buildFailed[e.ImportPath] = true
		return
	}
	if e.Test == "" {
		rep.addPackage(e, progress)
		return
	}
	key := e.Package + "\x00" + e.Test
	switch e.Action {
	case "output":
		if !noise(e.Output) {
			builder(rep.tests, key).WriteString(e.Output)
		}
	case "pass":
		rep.Passed++
		delete(rep.tests, key)
	case "fail":
		rep.Failed++
		rep.pkgFailed[e.Package] = true
		rep.Failures = append(rep.Failures, Result{Package: e.Package, Test: e.Test, Output: builder(rep.tests, key).String()})
		delete(rep.tests, key)
	case "skip":
		rep.Skipped++
		rep.Skips = append(rep.Skips, Result{Package: e.Package, Test: e.Test, Output: builder(rep.tests, key).String()})
		delete(rep.tests, key)
	}
}

func (rep *Report) addPackage(e event, progress io.Writer) {
	switch e.Action {
	case "output":
		builder(rep.pkgOut, e.Package).WriteString(e.Output)
		// The package's closing line: "ok  \tpkg\t1.2s", "FAIL\tpkg ...", "?   \tpkg [no test files]".
		if strings.HasPrefix(e.Output, "ok  \t") || strings.HasPrefix(e.Output, "FAIL\t") {
			fmt.Fprint(progress, e.Output)
		}
	case "fail":
		if e.FailedBuild != "" {
			delete(rep.buildFailed, e.FailedBuild)
		}
		if rep.pkgFailed[e.Package] {
			return // its failed tests tell the story
		}
		out := builder(rep.pkgOut, e.Package).String()
		if e.FailedBuild != "" {
			out = builder(rep.builds, e.FailedBuild).String() + out
		}
		// Output of tests that never finished (a panic or a timeout) belongs here.
		var running []string
		for k := range rep.tests {
			if pkg, test, _ := strings.Cut(k, "\x00"); pkg == e.Package {
				running = append(running, test)
			}
		}
		sort.Strings(running)
		for _, test := range running {
			k := e.Package + "\x00" + test
			out = rep.tests[k].String() + out
			delete(rep.tests, k)
		}
		rep.Failed++
		rep.pkgFailed[e.Package] = true
		rep.Failures = append(rep.Failures, Result{Package: e.Package, Output: out})
	}
}

// noise is the per-test bookkeeping go test prints in -v mode.
func noise(s string) bool {
	for _, p := range []string{"=== RUN", "=== PAUSE", "=== CONT", "=== NAME"} {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// Verdict is why a run failed; empty when it passed.
type Verdict []string

// Judge decides whether the run passed: go test exited 0 (goTestErr nil), no test
// or package failed, at least one test ran, and, when realStackRequired, no
// real-stack test was skipped.
func (rep *Report) Judge(goTestErr error, realStackRequired bool) Verdict {
	var v Verdict
	if goTestErr != nil {
		v = append(v, fmt.Sprintf("go test failed: %v", goTestErr))
	}
	if rep.Failed > 0 {
		v = append(v, fmt.Sprintf("%d failed", rep.Failed))
	}
	if rep.Passed+rep.Failed == 0 {
		v = append(v, "no test ran")
	}
	if realStackRequired {
		if n := len(rep.RealStackSkips()); n > 0 {
			v = append(v, fmt.Sprintf("%d real-stack tests skipped although the real stack was required (CI=true)", n))
		}
	}
	return v
}

// RealStackSkips are the skipped real-stack tests.
func (rep *Report) RealStackSkips() []Result {
	var out []Result
	for _, s := range rep.Skips {
		if s.RealStack() {
			out = append(out, s)
		}
	}
	return out
}

// Write prints the failures with their output, the skipped tests with their
// reasons, the verdict, and last the line "N passed, N failed, N skipped".
func (rep *Report) Write(w io.Writer, v Verdict) {
	if len(rep.Failures) > 0 {
		fmt.Fprintf(w, "\n== failed (%d)\n", len(rep.Failures))
		for _, f := range rep.Failures {
			out := f.Output
			if out == "" {
				out = "(no output)\n"
			} else if !strings.HasSuffix(out, "\n") {
				out += "\n"
			}
			fmt.Fprintf(w, "\n--- FAIL: %s\n%s", f.Name(), out)
		}
	}
	if len(rep.Skips) > 0 {
		fmt.Fprintf(w, "\n== skipped (%d)\n", len(rep.Skips))
		for _, s := range rep.Skips {
			fmt.Fprintf(w, "%s: %s\n", s.Name(), s.Reason())
		}
	}
	if len(v) > 0 {
		fmt.Fprintf(w, "\n== FAILED: %s\n", strings.Join(v, "; "))
	} else {
		fmt.Fprintln(w, "\n== PASSED")
	}
	fmt.Fprintf(w, "%d passed, %d failed, %d skipped\n", rep.Passed, rep.Failed, rep.Skipped)
}

// AddCheck counts a check that runs after the tests (e.g. that nothing was left
// behind) as one more test: passed, or failed with its output.
func (rep *Report) AddCheck(name, output string, err error) {
	if err == nil {
		rep.Passed++
		return
	}
	rep.Failed++
	rep.Failures = append(rep.Failures, Result{Package: name, Output: fmt.Sprintf("%s%v\n", output, err)})
}
