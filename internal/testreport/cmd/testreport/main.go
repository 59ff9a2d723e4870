// Command testreport runs `go test -json` (the command after --) and reports on
// it: package results as they finish, then the output of every failure, the
// skipped tests with their reasons, and last a line "N passed, N failed, N
// skipped". It exits 1 when go test failed, a test or package failed, no test ran,
// a -check failed, or, with CI=true (or -require-real-stack), a real-stack test
// was skipped.
//
//	testreport [-check 'name=shell command']... -- go test -json ./...
//
// Each -check runs after the tests and counts as one more test. Without a command,
// testreport reads a `go test -json` stream from stdin.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/testreport"
)

type checks []string

func (c *checks) String() string     { return strings.Join(*c, ", ") }
func (c *checks) Set(v string) error { *c = append(*c, v); return nil }

func main() {
	var cs checks
	flag.Var(&cs, "check", "`name=command` (run with bash -c) after the tests; counts as a test")
	realStack := flag.Bool("require-real-stack", isCI(), "a skipped real-stack test fails the run (default: CI=true)")
	logPath := flag.String("log", os.Getenv("KVM_TEST_LOG"), "also write go test's whole -json output (every test's log, passed ones too) to this `file` (default $KVM_TEST_LOG)")
	flag.Parse()

	start := time.Now()
	in := io.Reader(os.Stdin)
	var cmd *exec.Cmd
	if args := flag.Args(); len(args) > 0 {
		r, w, err := os.Pipe()
		if err != nil {
			fatal(err)
		}
		cmd = exec.Command(args[0], args[1:]...)
		// One pipe for both: go's own errors (stderr) stay in order with the events.
		cmd.Stdout, cmd.Stderr = w, w
		if err := cmd.Start(); err != nil {
			fatal(err)
		}
		w.Close()
		in = r
	}
	if *logPath != "" {
		f, err := os.Create(*logPath)
		if err != nil {
			fatal(err)
		}
		defer f.Close()
		in = io.TeeReader(in, f)
	}
	rep, readErr := testreport.Read(in, os.Stdout)
	var goTestErr error
	if cmd != nil {
		goTestErr = cmd.Wait()
	}
	if readErr != nil && goTestErr == nil {
		goTestErr = fmt.Errorf("reading its output: %w", readErr)
	}
	for _, c := range cs {
		name, script, ok := strings.Cut(c, "=")
		if !ok {
			fatal(fmt.Errorf("-check %q: want name=command", c))
		}
		fmt.Printf("== %s\n", name)
		out, err := exec.Command("bash", "-c", script).CombinedOutput()
		os.Stdout.Write(out)
		rep.AddCheck(name, string(out), err)
	}
	v := rep.Judge(goTestErr, *realStack)
	fmt.Printf("\n== took %s\n", time.Since(start).Round(time.Second))
	rep.Write(os.Stdout, v)
	if len(v) > 0 {
		os.Exit(1)
	}
}

func isCI() bool {
	switch strings.ToLower(os.Getenv("CI")) {
	case "true", "1", "yes":
		return true
	}
	return false
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "testreport:", err)
	os.Exit(2)
}
