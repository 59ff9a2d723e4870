package placement

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
)

// randomInput builds a small, constraint-heavy cluster so that every rule
// (and the unsatisfiable paths) gets exercised.
func randomInput(seed uint64, nh, nr uint8, pack bool) Input {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	in := Input{Requests: map[string]Request{}, Previous: map[string]string{}, Existing: map[string]Resources{}}
	if pack {
		in.Strategy = StrategyPack
	}
	ratios := []float64{0, 1, 1.5, 2, 4}
	for i := range int(nh%10) + 1 {
		h := Host{Name: fmt.Sprintf("h%d", i), Healthy: r.IntN(8) != 0, CPUs: 4 + r.Int64N(29), MemoryMiB: 1024 * (4 + r.Int64N(29)),
			CPUOvercommit: ratios[r.IntN(len(ratios))], MemoryOvercommit: ratios[r.IntN(3)]}
		if r.IntN(3) == 0 {
			h.AllocatedVCPU, h.AllocatedMemoryMiB = r.Int64N(h.CPUs+2), r.Int64N(h.MemoryMiB+1024)
		}
		if r.IntN(2) == 0 {
			h.Labels = map[string]string{"zone": []string{"a", "b"}[r.IntN(2)]}
		}
		h.Maintenance = r.IntN(10) == 0
		in.Hosts = append(in.Hosts, h)
	}
	if r.IntN(2) == 0 {
		in.Rebalance = &Rebalance{Threshold: []float64{0, 0.05, 0.2, 0.5}[r.IntN(4)], MaxMoves: r.IntN(6)}
	}
	for i := range int(nr % 40) {
		key := fmt.Sprintf("k%02d", i)
		q := Request{VCPU: 1 + r.Int64N(4), MemoryMiB: 256 * (1 + r.Int64N(16))}
		q.AntiAffinityGroup = []string{"", "", "", "", "x", "y", "z", "w"}[r.IntN(8)]
		if r.IntN(5) == 0 {
			q.AffinityGroup = []string{"p", "q"}[r.IntN(2)]
		}
		if r.IntN(6) == 0 {
			q.HostLabels = map[string]string{"zone": []string{"a", "b"}[r.IntN(2)]}
		}
		in.Requests[key] = q
		if r.IntN(2) == 0 {
			if j := r.IntN(len(in.Hosts) + 1); j < len(in.Hosts) {
				in.Previous[key] = in.Hosts[j].Name
			} else {
				in.Previous[key] = "gone"
			}
			if r.IntN(2) == 0 {
				in.Existing[key] = Resources{r.Int64N(q.VCPU + 1), r.Int64N(q.MemoryMiB + 1)}
			}
		}
	}
	return in
}

// checkInvariants verifies a successful result against the rules, using an
// accounting independent of the engine's.
func checkInvariants(t *testing.T, in Input, res Result) {
	t.Helper()
	hosts := map[string]Host{}
	for _, h := range in.Hosts {
		hosts[h.Name] = h
	}
	used := map[string][2]int64{}
	anti := map[[2]string]string{}
	aff := map[string]string{}
	for key, q := range in.Requests {
		hn, ok := res.Assignments[key]
		h, known := hosts[hn]
		if !ok || !known || !h.Healthy || h.Maintenance {
			t.Fatalf("%s assigned to %q (known %v, healthy %v, maintenance %v)", key, hn, known, h.Healthy, h.Maintenance)
		}
		if !hasLabels(&hostState{labels: h.Labels}, q.HostLabels) {
			t.Fatalf("%s on %s lacks labels %v", key, hn, q.HostLabels)
		}
		if g := q.AntiAffinityGroup; g != "" {
			if other, dup := anti[[2]string{g, hn}]; dup {
				t.Fatalf("anti_affinity_group %s: %s and %s both on %s", g, other, key, hn)
			}
			anti[[2]string{g, hn}] = key
		}
		if g := q.AffinityGroup; g != "" {
			if other, ok := aff[g]; ok && other != hn {
				t.Fatalf("affinity_group %s split over %s and %s", g, other, hn)
			}
			aff[g] = hn
		}
		c, m := q.VCPU, q.MemoryMiB
		if ex, ok := in.Existing[key]; ok && in.Previous[key] == hn {
			c, m = max(0, c-ex.VCPU), max(0, m-ex.MemoryMiB)
		}
		u := used[hn]
		used[hn] = [2]int64{u[0] + c, u[1] + m}
		if mv, moved := res.Moved[key]; moved == (in.Previous[key] == hn) || (moved && mv.To != hn) {
			t.Fatalf("%s: Moved entry %+v inconsistent with previous %q → %q", key, mv, in.Previous[key], hn)
		}
	}
	for hn, u := range used {
		h := hosts[hn]
		c := h.Capacity()
		if u[0] > 0 && u[0] > c.VCPU-h.AllocatedVCPU || u[1] > 0 && u[1] > c.MemoryMiB-h.AllocatedMemoryMiB {
			t.Fatalf("%s over capacity: cap %+v allocated %d/%d, placed %v", hn, c, h.AllocatedVCPU, h.AllocatedMemoryMiB, u)
		}
	}
}

func placeChecked(t *testing.T, in Input) (Result, error) {
	t.Helper()
	res, err := Place(in)
	res2, err2 := Place(in)
	if fmt.Sprint(err) != fmt.Sprint(err2) || !reflect.DeepEqual(res, res2) {
		t.Fatalf("not deterministic: %v / %v", err, err2)
	}
	if err != nil {
		var ue *UnsatisfiableError
		if !errors.As(err, &ue) || len(ue.Failures) == 0 {
			t.Fatalf("unexpected error type %T: %v", err, err)
		}
		for _, f := range ue.Failures {
			if f.Message == "" || f.Constraint == "" || len(f.Keys) == 0 {
				t.Fatalf("incomplete failure %+v", f)
			}
		}
		return res, err
	}
	checkInvariants(t, in, res)
	return res, nil
}

// applied is the input of the next plan after res was applied: the previous
// assignments are res, and a key keeps its Existing entry only where it
// stayed, so every key is charged exactly as in the run that produced res.
func applied(in Input, res Result) Input {
	next := in
	next.Previous = maps.Clone(res.Assignments)
	next.Existing = map[string]Resources{}
	for k, ex := range in.Existing {
		if in.Previous[k] == res.Assignments[k] {
			next.Existing[k] = ex
		}
	}
	next.Requests = maps.Clone(in.Requests)
	return next
}

func fuzzOne(t *testing.T, seed uint64, nh, nr uint8, pack bool) {
	in := randomInput(seed, nh, nr, pack)
	res, err := placeChecked(t, in)
	if err != nil {
		return
	}
	if in.Rebalance != nil {
		checkRebalance(t, in)
		// The rules below are about placement alone.
		in.Rebalance = nil
		if res, err = placeChecked(t, in); err != nil {
			t.Fatalf("placeable with rebalance but not without: %v", err)
		}
	}
	// Replanning an unchanged world moves nothing.
	next := applied(in, res)
	again, err := placeChecked(t, next)
	if err != nil || len(again.Moved) != 0 {
		t.Fatalf("replan: err %v, moved %v", err, again.Moved)
	}
	// New keys never displace kept ones.
	grown := applied(in, res)
	r := rand.New(rand.NewPCG(seed, 7))
	for i := range 3 {
		grown.Requests[fmt.Sprintf("new%d", i)] = Request{VCPU: 1 + r.Int64N(2), MemoryMiB: 512,
			AntiAffinityGroup: []string{"", "x"}[r.IntN(2)], AffinityGroup: []string{"", "", "p"}[r.IntN(3)]}
	}
	if res2, err := placeChecked(t, grown); err == nil {
		for k, h := range res.Assignments {
			if res2.Assignments[k] != h {
				t.Fatalf("adding keys moved %s from %s to %s", k, h, res2.Assignments[k])
			}
		}
	}
	// Losing (or sickening) one host moves only that host's keys.
	victim := in.Hosts[r.IntN(len(in.Hosts))].Name
	for _, remove := range []bool{true, false} {
		shrunk := applied(in, res)
		shrunk.Hosts = nil
		for _, h := range in.Hosts {
			if h.Name == victim {
				if remove {
					continue
				}
				h.Healthy = false
			}
			shrunk.Hosts = append(shrunk.Hosts, h)
		}
		res3, err := placeChecked(t, shrunk)
		if err != nil {
			continue
		}
		for k, h := range res.Assignments {
			if h == victim && res3.Assignments[k] == victim {
				t.Fatalf("%s stayed on lost host %s", k, victim)
			}
			if h != victim && res3.Assignments[k] != h {
				t.Fatalf("losing %s moved %s from %s to %s", victim, k, h, res3.Assignments[k])
			}
		}
	}
}

func FuzzPlace(f *testing.F) {
	for i := range uint64(20) {
		f.Add(i, uint8(i), uint8(i*7), i%2 == 0)
	}
	f.Fuzz(func(t *testing.T, seed uint64, nh, nr uint8, pack bool) {
		fuzzOne(t, seed, nh, nr, pack)
	})
}

// TestRandomized runs the fuzz body over many seeds in normal test runs, so
// the invariants are checked without -fuzz.
func TestRandomized(t *testing.T) {
	n := uint64(3000)
	if testing.Short() {
		n = 300
	}
	ok := 0
	for seed := range n {
		fuzzOne(t, seed, uint8(seed), uint8(seed/3), seed%2 == 0)
		if _, err := Place(randomInput(seed, uint8(seed), uint8(seed/3), seed%2 == 0)); err == nil {
			ok++
		}
	}
	// The generator must produce enough satisfiable inputs to mean something.
	if ok < int(n)/4 {
		t.Errorf("only %d of %d random inputs were satisfiable", ok, n)
	}
	t.Logf("%d of %d random inputs satisfiable", ok, n)
}

// checkRebalance: a plan moves at most MaxMoves keys for rebalancing; plans
// of the applied result strictly lower the imbalance and come to rest, and
// once it is at most the threshold they move nothing.
func checkRebalance(t *testing.T, in Input) {
	t.Helper()
	// A running VM is part of its host's allocation; random inputs may
	// report less, which no real host does.
	in.Hosts = append([]Host(nil), in.Hosts...)
	for i := range in.Hosts {
		var c, m int64
		for k, ex := range in.Existing {
			if in.Previous[k] == in.Hosts[i].Name {
				c, m = c+ex.VCPU, m+ex.MemoryMiB
			}
		}
		in.Hosts[i].AllocatedVCPU = max(in.Hosts[i].AllocatedVCPU, c)
		in.Hosts[i].AllocatedMemoryMiB = max(in.Hosts[i].AllocatedMemoryMiB, m)
	}
	res, err := placeChecked(t, in)
	if err != nil {
		return
	}
	prev, prevSpread := math.Inf(1), math.Inf(1)
	for plan := 0; ; plan++ {
		n := rebalanceMoves(res)
		if n > in.Rebalance.MaxMoves {
			t.Fatalf("plan %d: %d rebalance moves, max_moves %d", plan, n, in.Rebalance.MaxMoves)
		}
		next := appliedReal(in, res)
		imb, spread := balanceOf(next)
		if n > 0 && !better(imb, spread, prev, prevSpread) {
			t.Fatalf("plan %d: %d moves lowered neither the imbalance (%g → %g) nor the spread (%g → %g)", plan, n, prev, imb, prevSpread, spread)
		}
		again, err := placeChecked(t, next)
		if err != nil {
			t.Fatalf("plan %d of the applied result: %v", plan+1, err)
		}
		if len(again.Moved) != rebalanceMoves(again) {
			t.Fatalf("plan %d of the applied result moves for other reasons: %v", plan+1, again.Moved)
		}
		if len(again.Moved) == 0 {
			return
		}
		if imb <= in.Rebalance.Threshold+epsilon {
			t.Fatalf("plan %d: imbalance %g is within threshold %g, yet the next plan moves %v", plan+1, imb, in.Rebalance.Threshold, again.Moved)
		}
		if plan > 50 {
			t.Fatal("rebalancing does not come to rest")
		}
		in, res, prev, prevSpread = next, again, imb, spread
	}
}
