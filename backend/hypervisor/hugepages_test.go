package hypervisor

import (
	"context"
	"log/slog"
	"testing"
)

// The test driver reports two NUMA nodes and made-up free huge pages; the
// host must show them (the acceptance tests' admission relies on it).
func TestHostMemoryLayoutTestDriver(t *testing.T) {
	l, err := Open("test:///default", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	r, err := l.Resources(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.NUMANodes) != 2 || r.NUMANodes[0] != 0 || r.NUMANodes[1] != 1 {
		t.Errorf("NUMA nodes %v, want [0 1]", r.NUMANodes)
	}
	hp := r.Hugepages
	if hp == nil || hp.SizeKiB != 2048 || hp.Free <= 0 || hp.Total < hp.Free {
		t.Errorf("huge pages %+v", hp)
	}
}
