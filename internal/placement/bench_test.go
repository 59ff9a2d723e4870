package placement

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// fleet returns n identical 64-CPU / 256 GiB hosts.
func fleet(n int, cpuRatio float64) []Host {
	hs := make([]Host, n)
	for i := range hs {
		hs[i] = Host{Name: fmt.Sprintf("host-%04d", i), Healthy: true, CPUs: 64, MemoryMiB: 256 * 1024,
			CPUOvercommit: cpuRatio, Labels: map[string]string{"zone": fmt.Sprint("z", i%3)}}
	}
	return hs
}

// mixedWorkload is n VMs of 1–8 vCPU and 512–16384 MiB. With constraints,
// a tenth are in anti-affinity groups of 5, a twentieth in affinity pairs
// and a twentieth pinned to a zone, like a real multi-team fleet.
func mixedWorkload(n int, seed uint64, constraints bool) map[string]Request {
	r := rand.New(rand.NewPCG(seed, 1))
	m := make(map[string]Request, n)
	for i := range n {
		q := Request{VCPU: 1 + r.Int64N(8), MemoryMiB: 512 * (1 + r.Int64N(32))}
		if constraints {
			switch i % 20 {
			case 0, 1:
				q.AntiAffinityGroup = fmt.Sprint("anti-", i/100)
			case 2:
				q.AffinityGroup = fmt.Sprint("aff-", i/40)
			case 3:
				q.HostLabels = map[string]string{"zone": fmt.Sprint("z", i%3)}
			}
		}
		m[fmt.Sprintf("vm-%05d", i)] = q
	}
	return m
}

func lowerBound(hs []Host, reqs map[string]Request) int {
	var c, m int64
	for _, q := range reqs {
		c += q.VCPU
		m += q.MemoryMiB
	}
	capa := hs[0].Capacity()
	return int(max((c+capa.VCPU-1)/capa.VCPU, (m+capa.MemoryMiB-1)/capa.MemoryMiB))
}

func TestPackNearLowerBound(t *testing.T) {
	for _, tc := range []struct {
		name        string
		cpuRatio    float64
		constraints bool
	}{
		{"cpu-bound", 1, false},
		{"memory-bound", 4, false},
		{"cpu-bound-constrained", 1, true},
		{"memory-bound-constrained", 4, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := fleet(1000, tc.cpuRatio)
			reqs := mixedWorkload(10000, 42, tc.constraints)
			start := time.Now()
			res := mustPlace(t, Input{Hosts: hs, Strategy: StrategyPack, Requests: reqs})
			elapsed := time.Since(start)
			used := len(countPerHost(res.Assignments))
			lb := lowerBound(hs, reqs)
			t.Logf("pack used %d hosts, lower bound %d (%.2f%%), %v", used, lb, 100*float64(used)/float64(lb)-100, elapsed)
			if float64(used) > 1.05*float64(lb) {
				t.Errorf("pack used %d hosts, more than 5%% over the lower bound %d", used, lb)
			}
		})
	}
}

func TestSpreadEven(t *testing.T) {
	hs := fleet(1000, 1)
	reqs := mixedWorkload(10000, 7, false)
	res := mustPlace(t, Input{Hosts: hs, Requests: reqs})
	load := map[string]int64{}
	for k, h := range res.Assignments {
		load[h] += reqs[k].VCPU
	}
	lo, hi := int64(1<<62), int64(0)
	for _, h := range hs {
		lo, hi = min(lo, load[h.Name]), max(hi, load[h.Name])
	}
	// 45 vCPU per host on average; worst-fit keeps every host within a
	// VM's size of the others.
	if hi-lo > 8 {
		t.Errorf("spread vCPU load ranges from %d to %d", lo, hi)
	}
}

func benchmarkPlace(b *testing.B, strategy string, constraints bool) {
	hs := fleet(1000, 1)
	reqs := mixedWorkload(10000, 42, constraints)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Place(Input{Hosts: hs, Strategy: strategy, Requests: reqs}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPlace10kOn1k(b *testing.B) {
	for _, s := range []string{StrategySpread, StrategyPack} {
		b.Run(s, func(b *testing.B) { benchmarkPlace(b, s, false) })
		b.Run(s+"-constrained", func(b *testing.B) { benchmarkPlace(b, s, true) })
	}
	// Replanning with every key kept is the common case in CI.
	b.Run("replan-kept", func(b *testing.B) {
		hs := fleet(1000, 1)
		reqs := mixedWorkload(10000, 42, true)
		first, err := Place(Input{Hosts: hs, Requests: reqs})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := Place(Input{Hosts: hs, Requests: reqs, Previous: first.Assignments}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
