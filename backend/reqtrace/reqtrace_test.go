package reqtrace

import (
	"context"
	"regexp"
	"testing"
	"time"
)

func TestServerTiming(t *testing.T) {
	ctx, tr := New(context.Background())
	end := Start(ctx, "lock")
	time.Sleep(2 * time.Millisecond)
	end()
	Start(ctx, "define")()
	Start(ctx, "lock")() // a second lock adds to the first
	got := tr.ServerTiming()
	if !regexp.MustCompile(`^lock;dur=[0-9]+\.[0-9], define;dur=[0-9]+\.[0-9]$`).MatchString(got) {
		t.Fatalf("ServerTiming() = %q", got)
	}
	if regexp.MustCompile(`^lock;dur=[01]\.`).MatchString(got) {
		t.Fatalf("lock shorter than the 2 ms it took: %q", got)
	}
}

func TestNoTraceIsANoOp(t *testing.T) {
	Start(context.Background(), "x")()
	var tr *Trace
	if tr.ServerTiming() != "" {
		t.Fatal("nil trace has timing")
	}
}
