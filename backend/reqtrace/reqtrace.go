// Package reqtrace records where the time of one API request goes: named
// phases (waiting for a lock, admission, the libvirt define, QEMU's start,
// the read-back) that the server reports in a Server-Timing header and in
// its per-request debug log line. Without a trace in the context (tests
// calling the service directly) every call is a no-op.
package reqtrace

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"
)

// Trace is the phases of one request, in the order they ended.
type Trace struct {
	mu     sync.Mutex
	phases []phase
}

type phase struct {
	name string
	d    time.Duration
}

type key struct{}

// New returns ctx carrying a new trace.
func New(ctx context.Context) (context.Context, *Trace) {
	t := &Trace{}
	return context.WithValue(ctx, key{}, t), t
}

// Start begins phase name; the returned func ends it. A phase that runs
// twice in one request (two locks of the same kind) is reported as one,
// with the durations added.
func Start(ctx context.Context, name string) func() {
	t, _ := ctx.Value(key{}).(*Trace)
	if t == nil {
		return func() {}
	}
	start := time.Now()
	return func() { t.add(name, time.Since(start)) }
}

func (t *Trace) add(name string, d time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range t.phases {
		if t.phases[i].name == name {
			t.phases[i].d += d
			return
		}
	}
	t.phases = append(t.phases, phase{name, d})
}

// ServerTiming is the Server-Timing header value: `lock;dur=0.4, define;dur=31.2`
// (milliseconds), or "" when nothing was recorded.
func (t *Trace) ServerTiming() string {
	if t == nil {
		return ""
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	parts := make([]string, len(t.phases))
	for i, p := range t.phases {
		parts[i] = fmt.Sprintf("%s;dur=%.1f", p.name, float64(p.d.Microseconds())/1000)
	}
	return strings.Join(parts, ", ")
}

// From returns the trace of ctx, or nil.
func From(ctx context.Context) *Trace {
	t, _ := ctx.Value(key{}).(*Trace)
	return t
}
