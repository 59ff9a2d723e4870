package service

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Crash points are a test-only fault hook: fault tests kill kvm-hostd with
// SIGKILL at a named step of a create, download, copy or migration, to prove
// that a restarted kvm-hostd and a re-applied configuration converge and
// leave nothing orphaned. A crash in the middle of such a step cannot be
// provoked from outside reliably.
//
// The hook is off unless BOTH variables are set in kvm-hostd's environment:
//
//	KVM_HOSTD_TEST_HOOKS=1
//	KVM_HOSTD_TEST_CRASH_AT=<point>   e.g. vm.defined
//
// so a stray KVM_HOSTD_TEST_CRASH_AT alone never kills a production host.
// Neither is a flag (hostd maps flags to KVM_HOSTD_* variables; these two
// deliberately have no flag), and they are read once at start.
//
// The points, in the order a request reaches them:
//
//	vm.create         PUT /v1/vms: admitted, before the domain is defined
//	vm.defined        the domain is defined, before it is started
//	vm.started        the domain runs, before the response is written
//	download.started  source_url download: fetch opened, nothing written
//	download.written  image written into the volume, checksum not verified
//	copy.streaming    host-to-host copy: the first bytes are written
//	migrate.started   200 ms after a migration was handed to libvirt
const (
	CrashVMCreate        = "vm.create"
	CrashVMDefined       = "vm.defined"
	CrashVMStarted       = "vm.started"
	CrashDownloadStarted = "download.started"
	CrashDownloadWritten = "download.written"
	CrashCopyStreaming   = "copy.streaming"
	CrashMigrateStarted  = "migrate.started"
)

// Delay points widen a race window the same way: with KVM_HOSTD_TEST_HOOKS=1,
// KVM_HOSTD_TEST_DELAY_AT=<point>=<duration> (e.g. vm.update.admitted=1s)
// makes every request that reaches the point wait there, so concurrent
// requests interleave at that step every time instead of by chance.
//
//	vm.update.admitted  PATCH /v1/vms: the change passed admission, before
//	                    libvirt applies it
const (
	DelayVMUpdateAdmitted = "vm.update.admitted"
)

// delayAt and delayFor are the armed delay point and its duration.
var delayAt, delayFor = func() (string, time.Duration) {
	if os.Getenv("KVM_HOSTD_TEST_HOOKS") != "1" {
		return "", 0
	}
	point, d, ok := strings.Cut(os.Getenv("KVM_HOSTD_TEST_DELAY_AT"), "=")
	dur, err := time.ParseDuration(d)
	if !ok || err != nil || dur <= 0 {
		return "", 0
	}
	return point, dur
}()

// delaypoint waits when point is the armed delay point; a no-op otherwise.
func delaypoint(point string) {
	if delayAt != "" && delayAt == point {
		time.Sleep(delayFor)
	}
}

// crashAt is the armed point, or "" (the production case).
var crashAt = func() string {
	if os.Getenv("KVM_HOSTD_TEST_HOOKS") != "1" {
		return ""
	}
	return os.Getenv("KVM_HOSTD_TEST_CRASH_AT")
}()

// crashpoint kills the process, as kill -9 would, when point is the armed
// crash point. A no-op otherwise.
func crashpoint(point string) {
	if crashAt == "" || crashAt != point {
		return
	}
	fmt.Fprintf(os.Stderr, "kvm-hostd: KVM_HOSTD_TEST_CRASH_AT=%s reached: SIGKILL\n", point)
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is delivered asynchronously; never run past the point
}

// crashingReader returns r, or, when point is armed, a reader that crashes
// at its second read: the first chunk has reached the writer, the rest has
// not, as in a crash mid-stream.
func crashingReader(r io.Reader, point string) io.Reader {
	if crashAt == "" || crashAt != point {
		return r
	}
	return &crashReader{r: r, point: point}
}

type crashReader struct {
	r     io.Reader
	point string
	reads int
}

func (c *crashReader) Read(b []byte) (int, error) {
	if c.reads++; c.reads > 1 {
		crashpoint(c.point)
	}
	return c.r.Read(b)
}

// crashingProgress returns progress, or, when point is armed, a progress
// func that crashes migrationCrashDelay after the first report (0: the work
// is handed to libvirt), so the crash lands while libvirt moves the data,
// or, for a small guest, after it moved it but before the operation is done.
func crashingProgress(progress func(float64), point string) func(float64) {
	if crashAt == "" || crashAt != point {
		return progress
	}
	var once sync.Once
	return func(p float64) {
		once.Do(func() { time.AfterFunc(migrationCrashDelay, func() { crashpoint(point) }) })
		progress(p)
	}
}

const migrationCrashDelay = 200 * time.Millisecond
