package placement

import (
	"fmt"
	"maps"
	"math"
	"strings"
	"testing"
)

// appliedReal is the world after res is applied, as the next plan sees it:
// a moved VM leaves its old host's allocation and joins its new host's, a
// kept one holds the larger of its old and requested size, and every key's
// Existing is what its VM holds now.
func appliedReal(in Input, res Result) Input {
	next := in
	next.Hosts = append([]Host(nil), in.Hosts...)
	idx := map[string]int{}
	for i, h := range next.Hosts {
		idx[h.Name] = i
	}
	next.Previous = maps.Clone(res.Assignments)
	next.Requests = maps.Clone(in.Requests)
	next.Existing = map[string]Resources{}
	for k, q := range in.Requests {
		held := Resources{q.VCPU, q.MemoryMiB}
		if ex, ok := in.Existing[k]; ok {
			if i, listed := idx[in.Previous[k]]; listed {
				next.Hosts[i].AllocatedVCPU -= ex.VCPU
				next.Hosts[i].AllocatedMemoryMiB -= ex.MemoryMiB
				if in.Previous[k] == res.Assignments[k] {
					held = Resources{max(ex.VCPU, q.VCPU), max(ex.MemoryMiB, q.MemoryMiB)}
				}
			}
		}
		i := idx[res.Assignments[k]]
		next.Hosts[i].AllocatedVCPU += held.VCPU
		next.Hosts[i].AllocatedMemoryMiB += held.MemoryMiB
		next.Existing[k] = held
	}
	return next
}

// imbalanceOf measures an applied world independently of the engine.
func imbalanceOf(in Input) float64 {
	imb, _ := balanceOf(in)
	return imb
}

// balanceOf is imbalanceOf and the sum of squared shares.
func balanceOf(in Input) (imb, spread float64) {
	hi, lo, n := math.Inf(-1), math.Inf(1), 0
	for _, h := range in.Hosts {
		c := h.Capacity().MemoryMiB
		if !h.Healthy || h.Maintenance || c <= 0 {
			continue
		}
		s := float64(h.AllocatedMemoryMiB) / float64(c)
		hi, lo, n = max(hi, s), min(lo, s), n+1
		spread += s * s
	}
	if n < 2 {
		return 0, spread
	}
	return hi - lo, spread
}

func rebalanceMoves(res Result) int {
	n := 0
	for _, m := range res.Moved {
		if m.Reason == ReasonRebalance {
			n++
		}
	}
	return n
}

// crowded is three 8 GiB hosts with six 1 GiB VMs running on h0.
func crowded(rb *Rebalance) Input {
	in := Input{Rebalance: rb, Requests: map[string]Request{}, Previous: map[string]string{}, Existing: map[string]Resources{}}
	for i := range 3 {
		in.Hosts = append(in.Hosts, Host{Name: fmt.Sprintf("h%d", i), Healthy: true, CPUs: 8, MemoryMiB: 8192, MemoryOvercommit: 1})
	}
	for i := range 6 {
		k := fmt.Sprintf("vm%d", i)
		in.Requests[k] = Request{VCPU: 1, MemoryMiB: 1024}
		in.Previous[k] = "h0"
		in.Existing[k] = Resources{1, 1024}
		in.Hosts[0].AllocatedVCPU++
		in.Hosts[0].AllocatedMemoryMiB += 1024
	}
	return in
}

func TestRebalanceEvensOutAndStops(t *testing.T) {
	in := crowded(&Rebalance{Threshold: 0.1, MaxMoves: 10})
	if got := imbalanceOf(in); got != 0.75 {
		t.Fatalf("starting imbalance %g, want 0.75", got)
	}
	res, err := placeChecked(t, in)
	if err != nil {
		t.Fatal(err)
	}
	// 6 GiB over three hosts: two each, reached with four moves.
	count := map[string]int{}
	for _, h := range res.Assignments {
		count[h]++
	}
	if count["h0"] != 2 || count["h1"] != 2 || count["h2"] != 2 || rebalanceMoves(res) != 4 {
		t.Fatalf("assignments %v (moves %v), want two VMs per host after 4 moves", res.Assignments, res.Moved)
	}
	for k, m := range res.Moved {
		if m.From != "h0" || m.Reason != ReasonRebalance || !strings.Contains(m.Detail, "threshold 0.10") {
			t.Errorf("%s: move %+v", k, m)
		}
	}
	// Deterministic: the smallest keys move, alternately to h1 and h2.
	if res.Assignments["vm0"] != "h1" || res.Assignments["vm1"] != "h2" || res.Assignments["vm4"] != "h0" {
		t.Errorf("assignments %v", res.Assignments)
	}
	next := appliedReal(in, res)
	if got := imbalanceOf(next); got > 0.1 {
		t.Fatalf("imbalance after apply %g, want <= threshold", got)
	}
	again, err := placeChecked(t, next)
	if err != nil || len(again.Moved) != 0 {
		t.Fatalf("second plan: %v, moves %v; want none", err, again.Moved)
	}
}

func TestRebalanceBounded(t *testing.T) {
	in := crowded(&Rebalance{Threshold: 0.1, MaxMoves: 3})
	plans := 0
	prev := imbalanceOf(in)
	for {
		res, err := placeChecked(t, in)
		if err != nil {
			t.Fatal(err)
		}
		if n := rebalanceMoves(res); n > 3 || n != len(res.Moved) {
			t.Fatalf("plan %d: %d moves %v, want at most 3, all rebalance", plans, n, res.Moved)
		}
		if len(res.Moved) == 0 {
			break
		}
		plans++
		in = appliedReal(in, res)
		if got := imbalanceOf(in); got >= prev-epsilon {
			t.Fatalf("plan %d did not lower the imbalance: %g → %g", plans, prev, got)
		} else {
			prev = got
		}
		if plans > 5 {
			t.Fatal("rebalancing does not come to rest")
		}
	}
	if plans != 2 {
		t.Errorf("took %d plans of at most 3 moves, want 2 (4 moves)", plans)
	}

	// max_moves 0 never moves; nor does an imbalance under the threshold.
	for _, rb := range []*Rebalance{{Threshold: 0.1, MaxMoves: 0}, {Threshold: 0.8, MaxMoves: 5}, nil} {
		if res, err := placeChecked(t, crowded(rb)); err != nil || len(res.Moved) != 0 {
			t.Errorf("rebalance %+v: %v moves %v, want none", rb, err, res.Moved)
		}
	}
}

func TestRebalanceKeepsRules(t *testing.T) {
	in := crowded(&Rebalance{Threshold: 0, MaxMoves: 10})
	in.Hosts[1].Labels = map[string]string{"zone": "b"}
	// vm0 must stay in zone a (h0 or h2); vm1 and vm2 share a host; vm3
	// and vm4 are apart from vm5, which sits on h2.
	in.Hosts[2].Labels = map[string]string{"zone": "a"}
	in.Hosts[0].Labels = map[string]string{"zone": "a"}
	in.Requests["vm0"] = Request{VCPU: 1, MemoryMiB: 1024, HostLabels: map[string]string{"zone": "a"}}
	in.Requests["vm1"] = Request{VCPU: 1, MemoryMiB: 1024, AffinityGroup: "pair"}
	in.Requests["vm2"] = Request{VCPU: 1, MemoryMiB: 1024, AffinityGroup: "pair"}
	in.Requests["vm3"] = Request{VCPU: 1, MemoryMiB: 1024, AntiAffinityGroup: "x"}
	in.Requests["vm6"] = Request{VCPU: 1, MemoryMiB: 1024, AntiAffinityGroup: "x"}
	in.Previous["vm6"] = "h2"
	in.Existing["vm6"] = Resources{1, 1024}
	in.Hosts[2].AllocatedVCPU++
	in.Hosts[2].AllocatedMemoryMiB += 1024
	res, err := placeChecked(t, in)
	if err != nil {
		t.Fatal(err)
	}
	if rebalanceMoves(res) == 0 {
		t.Fatalf("nothing moved: %v", res.Assignments)
	}
	if res.Assignments["vm1"] != res.Assignments["vm2"] {
		t.Errorf("affinity group split: %v", res.Assignments)
	}
	if res.Assignments["vm0"] == "h1" {
		t.Errorf("vm0 moved to h1, which lacks zone=a")
	}
	if res.Assignments["vm3"] == res.Assignments["vm6"] {
		t.Errorf("anti-affinity broken: %v", res.Assignments)
	}
	again, err := placeChecked(t, appliedReal(in, res))
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Moved) != 0 && imbalanceOf(appliedReal(in, res)) <= 0 {
		t.Errorf("second plan moved %v at imbalance 0", again.Moved)
	}
}

func TestRebalanceValidation(t *testing.T) {
	for _, rb := range []*Rebalance{{Threshold: -0.1, MaxMoves: 1}, {Threshold: 1.5, MaxMoves: 1}, {Threshold: math.NaN(), MaxMoves: 1}, {MaxMoves: -1}} {
		if _, err := Place(crowded(rb)); err == nil || !strings.Contains(err.Error(), "rebalance") {
			t.Errorf("rebalance %+v: err %v", rb, err)
		}
	}
}

func TestMaintenanceDrains(t *testing.T) {
	in := crowded(nil)
	in.Hosts[0].Maintenance = true
	res, err := placeChecked(t, in)
	if err != nil {
		t.Fatal(err)
	}
	for k, h := range res.Assignments {
		m := res.Moved[k]
		if h == "h0" || m.Reason != ReasonMaintenance || !strings.Contains(m.Detail, "host h0 is in maintenance") {
			t.Errorf("%s on %s, move %+v", k, h, m)
		}
	}
	// Leaving maintenance moves nothing back.
	next := appliedReal(in, res)
	next.Hosts[0].Maintenance = false
	if again, err := placeChecked(t, next); err != nil || len(again.Moved) != 0 {
		t.Errorf("after maintenance: %v, moves %v", err, again.Moved)
	}
	// Nowhere else to go: the error says why.
	in = crowded(nil)
	for i := range in.Hosts {
		in.Hosts[i].Maintenance = i < 2
		in.Hosts[i].Healthy = i != 2
	}
	if _, err := Place(in); err == nil || !strings.Contains(err.Error(), "no healthy host (h2 unhealthy; h0, h1 in maintenance)") {
		t.Errorf("err = %v", err)
	}
}

// Several hosts equally full: a move off one of them does not lower the
// imbalance at once, yet rebalancing must still proceed (by the spread).
func TestRebalanceTiedFullHosts(t *testing.T) {
	in := Input{Rebalance: &Rebalance{Threshold: 0.05, MaxMoves: 100}, Requests: map[string]Request{}, Previous: map[string]string{}, Existing: map[string]Resources{}}
	for i := range 4 {
		in.Hosts = append(in.Hosts, Host{Name: fmt.Sprintf("h%d", i), Healthy: true, CPUs: 16, MemoryMiB: 8192})
	}
	for i := range 8 {
		k := fmt.Sprintf("vm%d", i)
		h := i % 2 // h0 and h1 full alike, h2 and h3 empty
		in.Requests[k] = Request{VCPU: 1, MemoryMiB: 1024}
		in.Previous[k] = in.Hosts[h].Name
		in.Existing[k] = Resources{1, 1024}
		in.Hosts[h].AllocatedVCPU++
		in.Hosts[h].AllocatedMemoryMiB += 1024
	}
	res, err := placeChecked(t, in)
	if err != nil {
		t.Fatal(err)
	}
	next := appliedReal(in, res)
	if imb := imbalanceOf(next); imb > 0.05 || rebalanceMoves(res) != 4 {
		t.Fatalf("imbalance %g after %d moves %v, want two VMs per host after 4", imb, rebalanceMoves(res), res.Moved)
	}
	if again, err := placeChecked(t, next); err != nil || len(again.Moved) != 0 {
		t.Fatalf("second plan: %v %v", err, again.Moved)
	}
}
