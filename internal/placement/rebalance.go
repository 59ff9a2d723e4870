package placement

import (
	"fmt"
	"math"
	"sort"
	"strings"
)

// Rebalance asks Place to even out memory use across the hosts (plan-time
// DRS). See the package documentation, "Rebalancing".
type Rebalance struct {
	// Threshold is the imbalance, 0–1, above which moves are proposed:
	// the share of capacity allocated on the fullest eligible host minus
	// that on the emptiest.
	Threshold float64
	// MaxMoves bounds how many keys one plan moves; 0 never rebalances.
	MaxMoves int
}

// epsilon absorbs float noise, so a move must really improve the balance.
const epsilon = 1e-9

func (r *Rebalance) validate() error {
	switch {
	case r == nil:
		return nil
	case math.IsNaN(r.Threshold) || r.Threshold < 0 || r.Threshold > 1:
		return invalid("rebalance threshold must be between 0 and 1, got %g", r.Threshold)
	case r.MaxMoves < 0:
		return invalid("rebalance max_moves must be >= 0, got %d", r.MaxMoves)
	}
	return nil
}

// balancer is the after-apply memory view rebalancing works on: what each
// eligible host will hold once the plan is applied.
type balancer struct {
	e     *engine
	hosts []int     // eligible hosts: usable, with memory capacity
	in    []bool    // by host index: eligible
	load  []float64 // by host index: MiB held after apply
	// Per round (snapshot): shares, the three fullest and three emptiest
	// hosts, and the spread, so that a candidate move is measured in O(1).
	share  []float64
	top    []int
	bottom []int
	spread float64
}

// balance measures the eligible hosts with host c gaining delta MiB (c =
// -1 for none): the imbalance (max share − min share), the spread (sum of
// squared shares), and the fullest and emptiest host. The spread breaks
// ties: when several hosts are equally full, moving a key off one of them
// leaves the imbalance as it is but still evens the load out.
func (b *balancer) balance(c int, delta float64) (imb, spread float64, hiH, loH int) {
	hi, lo := math.Inf(-1), math.Inf(1)
	for _, h := range b.hosts {
		l := b.load[h]
		if h == c {
			l += delta
		}
		s := l * b.e.hosts[h].invM
		spread += s * s
		if s > hi {
			hi, hiH = s, h
		}
		if s < lo {
			lo, loH = s, h
		}
	}
	return hi - lo, spread, hiH, loH
}

// snapshot measures the current loads for a round of candidate moves.
func (b *balancer) snapshot() {
	b.spread = 0
	for _, h := range b.hosts {
		b.share[h] = b.load[h] * b.e.hosts[h].invM
		b.spread += b.share[h] * b.share[h]
	}
	order := append([]int(nil), b.hosts...)
	sort.SliceStable(order, func(i, j int) bool { return b.share[order[i]] > b.share[order[j]] })
	n := min(3, len(order))
	b.top = order[:n]
	b.bottom = nil
	for i := len(order) - 1; i >= len(order)-n; i-- {
		b.bottom = append(b.bottom, order[i])
	}
}

// moved measures the snapshot with host a losing credit MiB and host c
// gaining delta: only a's and c's shares change, so the extremes of the
// rest come from the three fullest and three emptiest hosts.
func (b *balancer) moved(a int, credit float64, c int, delta float64) (imb, spread float64) {
	hi, lo := math.Inf(-1), math.Inf(1)
	spread = b.spread
	note := func(s float64) { hi, lo = max(hi, s), min(lo, s) }
	if b.in[a] {
		s := (b.load[a] - credit) * b.e.hosts[a].invM
		spread += s*s - b.share[a]*b.share[a]
		note(s)
	}
	s := (b.load[c] + delta) * b.e.hosts[c].invM
	spread += s*s - b.share[c]*b.share[c]
	note(s)
	for _, h := range b.top {
		if h != a && h != c {
			note(b.share[h])
			break
		}
	}
	for _, h := range b.bottom {
		if h != a && h != c {
			note(b.share[h])
			break
		}
	}
	return hi - lo, spread
}

// better orders (imbalance, spread) pairs: a lower imbalance wins, then a
// lower spread; differences within epsilon do not count.
func better(imb, spread, thanImb, thanSpread float64) bool {
	if imb < thanImb-epsilon {
		return true
	}
	return imb <= thanImb+epsilon && spread < thanSpread-epsilon
}

// moveUnit is what rebalancing moves at once: a single kept key, or every
// member of an affinity group (they share a host and move together).
type moveUnit struct {
	keys   []*keyState
	from   int
	c, m   int64   // requested size: what the target is charged
	credit float64 // MiB the source holds for them now
	labels map[string]string
	anti   []string
}

// rebalance moves kept keys, one unit at a time, each time the one that
// reduces the imbalance most (then the spread), until it is at most the
// threshold, no move reduces either, or MaxMoves keys have moved. Only keys kept on their previous
// host move: a key placed in this plan already went where spread or pack
// put it.
func (e *engine) rebalance(r *Rebalance) {
	if r == nil || r.MaxMoves <= 0 {
		return
	}
	b := &balancer{e: e, load: make([]float64, len(e.hosts)), in: make([]bool, len(e.hosts)), share: make([]float64, len(e.hosts))}
	for i := range e.hosts {
		hs := &e.hosts[i]
		b.load[i] = float64(hs.capM - hs.freeM)
		if hs.usable() && hs.capM > 0 {
			b.hosts = append(b.hosts, i)
			b.in[i] = true
		}
	}
	if len(b.hosts) < 2 {
		return
	}
	units := e.moveUnits()
	moved := 0
	for moved < r.MaxMoves {
		cur, curSpread, hiH, loH := b.balance(-1, 0)
		if cur <= r.Threshold+epsilon {
			return
		}
		b.snapshot()
		var best *moveUnit
		bestTo, bestImb, bestSpread := -1, cur, curSpread
		for _, u := range units {
			if u.from < 0 || len(u.keys) > r.MaxMoves-moved {
				continue
			}
			for _, to := range b.hosts {
				if to == u.from || !e.canTake(to, u) {
					continue
				}
				// The source loses what it holds for the unit, the target
				// gains the unit's requested size.
				imb, spread := b.moved(u.from, u.credit, to, float64(u.m))
				if better(imb, spread, bestImb, bestSpread) {
					best, bestTo, bestImb, bestSpread = u, to, imb, spread
				}
			}
		}
		if best == nil {
			return
		}
		detail := fmt.Sprintf("rebalance: allocated memory share %s %.0f%% vs %s %.0f%% (imbalance %.2f > threshold %.2f; %.2f after this move)",
			e.hosts[hiH].name, 100*b.share[hiH], e.hosts[loH].name, 100*b.share[loH], cur, r.Threshold, bestImb)
		e.moveTo(best, bestTo, detail)
		b.load[best.from] -= best.credit
		b.load[bestTo] += float64(best.m)
		best.from = -1 // a unit moves at most once per plan
		moved += len(best.keys)
	}
}

// moveUnits lists what rebalancing may move, in key order.
func (e *engine) moveUnits() []*moveUnit {
	var units []*moveUnit
	seen := map[string]bool{}
	for _, k := range e.keys {
		if !k.kept {
			continue
		}
		members := []*keyState{k}
		if g := k.req.AffinityGroup; g != "" {
			if seen[g] {
				continue
			}
			seen[g] = true
			members = nil
			whole := true
			for _, m := range e.affinity[g] {
				// Only a group wholly kept on one host moves as a unit.
				if !m.kept || m.host != k.host {
					whole = false
				}
				members = append(members, m)
			}
			if !whole {
				continue
			}
		}
		u := &moveUnit{keys: members, from: k.host, labels: map[string]string{}}
		for _, m := range members {
			u.c += m.req.VCPU
			u.m += m.req.MemoryMiB
			held := m.req.MemoryMiB
			if m.existing != nil {
				held = max(held, m.existing.MemoryMiB)
			}
			u.credit += float64(held)
			for lk, lv := range m.req.HostLabels {
				u.labels[lk] = lv
			}
			if g := m.req.AntiAffinityGroup; g != "" && !contains(u.anti, g) {
				u.anti = append(u.anti, g)
			}
		}
		units = append(units, u)
	}
	return units
}

// canTake reports whether host h can take u under every rule a placement
// keeps: labels, anti-affinity and capacity (charged in full, as for any
// key that is not on its previous host).
func (e *engine) canTake(h int, u *moveUnit) bool {
	hs := &e.hosts[h]
	if !hs.usable() || !hasLabels(hs, u.labels) || hs.freeC < u.c || hs.freeM < u.m {
		return false
	}
	for _, g := range u.anti {
		if len(e.anti[g][h]) > 0 {
			return false
		}
	}
	return true
}

// moveTo moves u to host h. The source's free capacity is not given back:
// until the move is applied the VMs still hold it (see the package
// documentation), so the plan stays conservative.
func (e *engine) moveTo(u *moveUnit, h int, detail string) {
	hs := &e.hosts[h]
	hs.freeC -= u.c
	hs.freeM -= u.m
	for _, k := range u.keys {
		if g := k.req.AntiAffinityGroup; g != "" {
			e.anti[g][k.host] = remove(e.anti[g][k.host], k.key)
			if len(e.anti[g][k.host]) == 0 {
				delete(e.anti[g], k.host)
			}
		}
		k.kept, k.host, k.reason, k.detail = false, h, ReasonRebalance, detail
		e.occupy(k)
	}
	if len(u.keys) > 1 {
		names := make([]string, len(u.keys))
		for i, k := range u.keys {
			names[i] = k.key
		}
		for _, k := range u.keys {
			k.detail = detail + fmt.Sprintf("; affinity_group %q moves together (%s)", k.req.AffinityGroup, strings.Join(names, ", "))
		}
	}
}

func remove(s []string, v string) []string {
	out := s[:0]
	for _, x := range s {
		if x != v {
			out = append(out, x)
		}
	}
	return out
}
