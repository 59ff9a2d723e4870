package placement

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Strategies accepted in Input.Strategy.
const (
	StrategySpread = "spread"
	StrategyPack   = "pack"
)

// Host is one candidate host, as reported by the kvm_hosts data source.
type Host struct {
	Name    string
	Healthy bool
	// Maintenance: the operator is draining the host. Like an unhealthy
	// host it keeps no key and receives none.
	Maintenance        bool
	CPUs               int64
	MemoryMiB          int64
	AllocatedVCPU      int64
	AllocatedMemoryMiB int64
	// CPUOvercommit and MemoryOvercommit multiply the physical resources; 0
	// means 1 so a zero-valued Host is not silently unusable.
	CPUOvercommit    float64
	MemoryOvercommit float64
	Labels           map[string]string
}

// Capacity is what the host admits in total, overcommit included.
func (h Host) Capacity() Resources {
	return Resources{
		VCPU:      scaled(h.CPUs, h.CPUOvercommit),
		MemoryMiB: scaled(h.MemoryMiB, h.MemoryOvercommit),
	}
}

// scaled is the capacity rule kvm-hostd admits by.
func scaled(n int64, ratio float64) int64 { return api.Capacity(n, ratio) }

// Resources is an amount of vCPU and memory.
type Resources struct {
	VCPU      int64
	MemoryMiB int64
}

// Request is what one key of kvm_cluster_placement.request asks for.
type Request struct {
	VCPU              int64
	MemoryMiB         int64
	AntiAffinityGroup string            // members must be on distinct hosts
	AffinityGroup     string            // members must share one host
	HostLabels        map[string]string // the host must carry every pair
}

// Input is everything a placement depends on.
type Input struct {
	Hosts    []Host
	Strategy string // "spread" (default when empty) or "pack"
	Requests map[string]Request
	// Previous is key → host from the last plan; keys absent from Requests
	// are ignored.
	Previous map[string]string
	// Existing is key → resources of the VM that already runs on
	// Previous[key] and is therefore included in that host's Allocated*.
	// See the package documentation for why this matters.
	Existing map[string]Resources
	// Rebalance, when set with MaxMoves > 0, moves kept keys to even out
	// memory use (see the package documentation).
	Rebalance *Rebalance
}

// Reason says why a key is not on its previous host.
type Reason string

// Reasons reported in Move.Reason.
const (
	ReasonNew           Reason = "new"          // no previous host
	ReasonHostRemoved   Reason = "host_removed" // previous host not in Hosts
	ReasonHostUnhealthy Reason = "host_unhealthy"
	ReasonMaintenance   Reason = "maintenance"         // previous host is in maintenance
	ReasonRebalance     Reason = "rebalance"           // moved to even out memory use (Input.Rebalance)
	ReasonLabels        Reason = "host_labels"         // previous host lacks a required label
	ReasonAffinity      Reason = "affinity_group"      // joined its group elsewhere
	ReasonAntiAffinity  Reason = "anti_affinity_group" // collided with a kept member
	ReasonCapacity      Reason = "capacity"            // no longer fits on its previous host
)

// Move describes a key that is not (or no longer) on its previous host.
type Move struct {
	From   string // "" for a new key
	To     string
	Reason Reason
	Detail string // human-readable explanation
}

// Result is a successful placement.
type Result struct {
	Assignments map[string]string // key → host name, for every request
	Moved       map[string]Move   // keys whose host differs from Previous (new keys included)
}

// ErrInvalidInput is wrapped by every input validation error.
var ErrInvalidInput = errors.New("invalid placement input")

// Failure is one unsatisfiable unit: a single key, or the members of an
// affinity group that had to be placed together.
type Failure struct {
	Keys       []string // sorted
	Constraint string   // "capacity", "anti_affinity_group", "affinity_group", "host_labels" or "hosts"
	Message    string   // full sentence, starting with the request(s) it is about
}

// UnsatisfiableError lists every request that could not be placed.
type UnsatisfiableError struct {
	Failures []Failure // sorted by first key
}

// maxFailuresShown keeps a plan error readable when a whole fleet is full;
// Failures still holds every one.
const maxFailuresShown = 20

func (e *UnsatisfiableError) Error() string {
	var msgs []string
	for i, f := range e.Failures {
		if i == maxFailuresShown {
			msgs = append(msgs, fmt.Sprintf("... and %d more unsatisfiable requests", len(e.Failures)-i))
			break
		}
		msgs = append(msgs, f.Message)
	}
	return strings.Join(msgs, "\n")
}

// Keys returns every key that could not be placed, sorted.
func (e *UnsatisfiableError) Keys() []string {
	var keys []string
	for _, f := range e.Failures {
		keys = append(keys, f.Keys...)
	}
	sort.Strings(keys)
	return keys
}

// hostState is the mutable per-host state of one computation.
type hostState struct {
	name         string
	healthy      bool
	maint        bool
	labels       map[string]string
	capC, capM   int64
	freeC, freeM int64
	invC, invM   float64 // 1/capacity, 0 when the capacity is 0
}

type keyState struct {
	key      string
	req      Request
	prevName string // Previous[key], "" if none
	prev     int    // host index of prevName, -1 if none or not listed
	existing *Resources
	host     int // assigned host index, -1 while unassigned
	kept     bool
	reason   Reason
	detail   string
	failed   bool
}

// charge is what placing k on host h costs in this computation.
func (k *keyState) charge(h int) (int64, int64) {
	c, m := k.req.VCPU, k.req.MemoryMiB
	if k.existing != nil && h == k.prev {
		c = max(0, c-k.existing.VCPU)
		m = max(0, m-k.existing.MemoryMiB)
	}
	return c, m
}

type engine struct {
	pack      bool
	hosts     []hostState
	hostIdx   map[string]int
	keys      []*keyState // sorted by key
	byKey     map[string]*keyState
	affinity  map[string][]*keyState // group → members, sorted by key
	anti      map[string]map[int][]string
	labelSets map[string][]int
	failures  []Failure
	blocked   []bool // scratch, len(hosts)
}

// Place computes assignments for in. On error the Result is zero; the error
// wraps ErrInvalidInput or is an *UnsatisfiableError.
func Place(in Input) (Result, error) {
	e, err := newEngine(in)
	if err != nil {
		return Result{}, err
	}
	e.keep()
	e.placeRest()
	if len(e.failures) > 0 {
		sort.Slice(e.failures, func(i, j int) bool { return e.failures[i].Keys[0] < e.failures[j].Keys[0] })
		return Result{}, &UnsatisfiableError{Failures: e.failures}
	}
	e.rebalance(in.Rebalance)
	res := Result{Assignments: make(map[string]string, len(e.keys)), Moved: map[string]Move{}}
	for _, k := range e.keys {
		to := e.hosts[k.host].name
		res.Assignments[k.key] = to
		if !k.kept && to != k.prevName {
			res.Moved[k.key] = Move{From: k.prevName, To: to, Reason: k.reason, Detail: k.detail}
		}
	}
	return res, nil
}

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidInput, fmt.Sprintf(format, a...))
}

func newEngine(in Input) (*engine, error) {
	e := &engine{
		hostIdx:   make(map[string]int, len(in.Hosts)),
		byKey:     make(map[string]*keyState, len(in.Requests)),
		affinity:  map[string][]*keyState{},
		anti:      map[string]map[int][]string{},
		labelSets: map[string][]int{},
	}
	if err := in.Rebalance.validate(); err != nil {
		return nil, err
	}
	switch in.Strategy {
	case "", StrategySpread:
	case StrategyPack:
		e.pack = true
	default:
		return nil, invalid("unknown strategy %q: use %q or %q", in.Strategy, StrategySpread, StrategyPack)
	}

	hosts := append([]Host(nil), in.Hosts...)
	sort.Slice(hosts, func(i, j int) bool { return hosts[i].Name < hosts[j].Name })
	e.hosts = make([]hostState, len(hosts))
	for i, h := range hosts {
		switch {
		case h.Name == "":
			return nil, invalid("a host has an empty name")
		case i > 0 && hosts[i-1].Name == h.Name:
			return nil, invalid("host %q is listed twice", h.Name)
		case h.CPUs < 0 || h.MemoryMiB < 0 || h.AllocatedVCPU < 0 || h.AllocatedMemoryMiB < 0:
			return nil, invalid("host %q has negative cpus, memory or allocation", h.Name)
		case h.CPUOvercommit < 0 || h.MemoryOvercommit < 0 || math.IsNaN(h.CPUOvercommit) || math.IsNaN(h.MemoryOvercommit) ||
			math.IsInf(h.CPUOvercommit, 0) || math.IsInf(h.MemoryOvercommit, 0):
			return nil, invalid("host %q has an invalid overcommit ratio", h.Name)
		}
		c := h.Capacity()
		hs := hostState{
			name: h.Name, healthy: h.Healthy, maint: h.Maintenance, labels: h.Labels,
			capC: c.VCPU, capM: c.MemoryMiB,
			freeC: c.VCPU - h.AllocatedVCPU, freeM: c.MemoryMiB - h.AllocatedMemoryMiB,
		}
		if hs.capC > 0 {
			hs.invC = 1 / float64(hs.capC)
		}
		if hs.capM > 0 {
			hs.invM = 1 / float64(hs.capM)
		}
		e.hosts[i] = hs
		e.hostIdx[h.Name] = i
	}
	e.blocked = make([]bool, len(e.hosts))

	names := make([]string, 0, len(in.Requests))
	for k := range in.Requests {
		names = append(names, k)
	}
	sort.Strings(names)
	e.keys = make([]*keyState, len(names))
	for i, name := range names {
		r := in.Requests[name]
		switch {
		case name == "":
			return nil, invalid("a request has an empty key")
		case r.VCPU <= 0:
			return nil, invalid("request %q: vcpu must be > 0, got %d", name, r.VCPU)
		case r.MemoryMiB <= 0:
			return nil, invalid("request %q: memory_mib must be > 0, got %d", name, r.MemoryMiB)
		}
		k := &keyState{key: name, req: r, prev: -1, host: -1}
		if p := in.Previous[name]; p != "" {
			k.prevName = p
			if idx, ok := e.hostIdx[p]; ok {
				k.prev = idx
			}
		}
		if ex, ok := in.Existing[name]; ok {
			if ex.VCPU < 0 || ex.MemoryMiB < 0 {
				return nil, invalid("existing resources of %q are negative", name)
			}
			ex := ex
			k.existing = &ex
		}
		e.keys[i] = k
		e.byKey[name] = k
		if r.AffinityGroup != "" {
			e.affinity[r.AffinityGroup] = append(e.affinity[r.AffinityGroup], k)
		}
	}
	return e, nil
}

// usable reports whether the host may hold keys: healthy and not in
// maintenance.
func (h *hostState) usable() bool { return h.healthy && !h.maint }

func hasLabels(h *hostState, want map[string]string) bool {
	for k, v := range want {
		if got, ok := h.labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func (e *engine) displace(k *keyState, r Reason, detail string) {
	k.kept, k.host, k.reason, k.detail = false, -1, r, detail
}

// displaceGroup displaces k and, if it belongs to an affinity group, every
// other kept member with it, so groups are never split (see package doc).
func (e *engine) displaceGroup(k *keyState, r Reason, detail string) {
	if g := k.req.AffinityGroup; g != "" {
		for _, m := range e.affinity[g] {
			if m.kept && m != k {
				e.displace(m, r, fmt.Sprintf("affinity_group %q moves with %q: %s", g, k.key, detail))
			}
		}
	}
	e.displace(k, r, detail)
}

// keep decides which keys stay on their previous host and charges them.
func (e *engine) keep() {
	for _, k := range e.keys {
		in := k.prevName
		switch {
		case in == "":
			k.reason, k.detail = ReasonNew, "new request"
		case k.prev < 0:
			k.reason, k.detail = ReasonHostRemoved, fmt.Sprintf("host %s is no longer listed", in)
		case !e.hosts[k.prev].healthy:
			k.reason, k.detail = ReasonHostUnhealthy, fmt.Sprintf("host %s is unhealthy", in)
		case e.hosts[k.prev].maint:
			k.reason, k.detail = ReasonMaintenance, fmt.Sprintf("host %s is in maintenance", in)
		case !hasLabels(&e.hosts[k.prev], k.req.HostLabels):
			k.reason, k.detail = ReasonLabels, fmt.Sprintf("host %s lacks host_labels %s", in, fmtLabels(k.req.HostLabels))
		default:
			k.kept, k.host = true, k.prev
		}
	}

	// Rule 1: affinity coherence.
	for _, g := range sortedKeys(e.affinity) {
		count := map[int][2]int{} // host → {members, existing members}
		for _, m := range e.affinity[g] {
			if m.kept {
				c := count[m.host]
				c[0]++
				if m.existing != nil {
					c[1]++
				}
				count[m.host] = c
			}
		}
		if len(count) < 2 {
			continue
		}
		best := -1
		for h, c := range count {
			if best < 0 {
				best = h
				continue
			}
			b := count[best]
			if c[0] > b[0] || (c[0] == b[0] && (c[1] > b[1] || (c[1] == b[1] && h < best))) {
				best = h
			}
		}
		for _, m := range e.affinity[g] {
			if m.kept && m.host != best {
				e.displace(m, ReasonAffinity, fmt.Sprintf("affinity_group %q is kept on %s", g, e.hosts[best].name))
			}
		}
	}

	// Rule 2: anti-affinity among kept keys. Winners are decided in
	// preference order, so the first holder of (group, host) stays.
	order := make([]*keyState, 0, len(e.keys))
	for _, k := range e.keys {
		if k.kept && k.req.AntiAffinityGroup != "" {
			order = append(order, k)
		}
	}
	sort.SliceStable(order, func(i, j int) bool { return order[i].existing != nil && order[j].existing == nil })
	holder := map[string]map[int]*keyState{}
	for _, k := range order {
		if !k.kept { // displaced with its affinity group meanwhile
			continue
		}
		g := k.req.AntiAffinityGroup
		if holder[g] == nil {
			holder[g] = map[int]*keyState{}
		}
		if w, ok := holder[g][k.host]; ok && w.kept {
			e.displaceGroup(k, ReasonAntiAffinity, fmt.Sprintf("anti_affinity_group %q: %q is kept on %s", g, w.key, e.hosts[k.prev].name))
			continue
		}
		holder[g][k.host] = k
	}

	// Rule 3: capacity per host, units (affinity groups' kept members or
	// single keys) with existing VMs first, then by key.
	type unit struct {
		members  []*keyState
		existing bool
	}
	var units []unit
	seen := map[string]bool{}
	for _, k := range e.keys {
		if !k.kept {
			continue
		}
		if g := k.req.AffinityGroup; g != "" {
			if seen[g] {
				continue
			}
			seen[g] = true
			u := unit{existing: true}
			for _, m := range e.affinity[g] {
				if m.kept {
					u.members = append(u.members, m)
					u.existing = u.existing && m.existing != nil
				}
			}
			units = append(units, u)
			continue
		}
		units = append(units, unit{members: []*keyState{k}, existing: k.existing != nil})
	}
	sort.SliceStable(units, func(i, j int) bool { return units[i].existing && !units[j].existing })
	for _, u := range units {
		h := u.members[0].host
		hs := &e.hosts[h]
		var c, m int64
		for _, k := range u.members {
			kc, km := k.charge(h)
			c += kc
			m += km
		}
		if (c > 0 && c > hs.freeC) || (m > 0 && m > hs.freeM) {
			detail := fmt.Sprintf("host %s has %d vCPU / %d MiB free, needs %d vCPU / %d MiB more", hs.name, max(0, hs.freeC), max(0, hs.freeM), c, m)
			for _, k := range u.members {
				e.displace(k, ReasonCapacity, detail)
			}
			continue
		}
		hs.freeC -= c
		hs.freeM -= m
	}

	for _, k := range e.keys {
		if k.kept {
			e.occupy(k)
		}
	}
}

// occupy records k's anti-affinity membership on its host.
func (e *engine) occupy(k *keyState) {
	g := k.req.AntiAffinityGroup
	if g == "" {
		return
	}
	if e.anti[g] == nil {
		e.anti[g] = map[int][]string{}
	}
	e.anti[g][k.host] = append(e.anti[g][k.host], k.key)
}

// placeUnit is a set of keys to be placed on one host together.
type placeUnit struct {
	keys       []*keyState
	c, m       int64
	labels     map[string]string
	anti       []string // distinct anti-affinity groups of the members
	anchor     int      // host the unit must go to, -1 if free
	group      string   // affinity group, "" for a single key
	anchorKeys []string // kept members that pin the group to anchor
	share      float64  // dominant share, for ordering
}

func (e *engine) placeRest() {
	var units []*placeUnit
	done := map[string]bool{}
	for _, k := range e.keys {
		if k.kept {
			continue
		}
		g := k.req.AffinityGroup
		if g == "" {
			units = append(units, &placeUnit{keys: []*keyState{k}, anchor: -1, labels: k.req.HostLabels})
			continue
		}
		if done[g] {
			continue
		}
		done[g] = true
		if u := e.groupUnit(g); u != nil {
			units = append(units, u)
		}
	}

	var refC, refM int64
	for i := range e.hosts {
		if e.hosts[i].usable() {
			refC, refM = max(refC, e.hosts[i].capC), max(refM, e.hosts[i].capM)
		}
	}
	for _, u := range units {
		for _, k := range u.keys {
			u.c += k.req.VCPU
			u.m += k.req.MemoryMiB
			if k.req.AntiAffinityGroup != "" && !contains(u.anti, k.req.AntiAffinityGroup) {
				u.anti = append(u.anti, k.req.AntiAffinityGroup)
			}
		}
		u.share = max(float64(u.c)/float64(max(refC, 1)), float64(u.m)/float64(max(refM, 1)))
	}
	sort.Slice(units, func(i, j int) bool {
		a, b := units[i], units[j]
		if (a.anchor >= 0) != (b.anchor >= 0) {
			return a.anchor >= 0
		}
		if a.share != b.share {
			return a.share > b.share
		}
		return a.keys[0].key < b.keys[0].key
	})
	for _, u := range units {
		e.placeUnit(u)
	}
}

// groupUnit builds the unit of an affinity group's unplaced members, or
// records a failure when the group contradicts itself.
func (e *engine) groupUnit(g string) *placeUnit {
	u := &placeUnit{anchor: -1, group: g, labels: map[string]string{}}
	var anchorKeys []string
	antiSeen := map[string]string{}
	labelFrom := map[string]string{}
	var all []string
	for _, m := range e.affinity[g] {
		all = append(all, m.key)
		if a := m.req.AntiAffinityGroup; a != "" {
			if other, ok := antiSeen[a]; ok {
				e.fail(e.affinity[g], "affinity_group", fmt.Sprintf(
					"%s: affinity_group %q requires one host but %q and %q are also in anti_affinity_group %q, which requires distinct hosts",
					quoteKeys(all), g, other, m.key, a))
				return nil
			}
			antiSeen[a] = m.key
		}
		for lk, lv := range m.req.HostLabels {
			if cur, ok := u.labels[lk]; ok && cur != lv {
				e.fail(e.affinity[g], "host_labels", fmt.Sprintf(
					"%s: affinity_group %q requires one host but %q requires host_labels %s=%s and %q requires %s=%s",
					quoteKeys(all), g, labelFrom[lk], lk, cur, m.key, lk, lv))
				return nil
			}
			u.labels[lk] = lv
			labelFrom[lk] = m.key
		}
		if m.kept {
			u.anchor = m.host
			anchorKeys = append(anchorKeys, m.key)
		} else {
			u.keys = append(u.keys, m)
		}
	}
	if u.anchor >= 0 {
		for _, k := range u.keys {
			k.detail += fmt.Sprintf("; joins affinity_group %q, anchored on %s by %s", g, e.hosts[u.anchor].name, strings.Join(anchorKeys, ", "))
		}
		u.anchorKeys = anchorKeys
	}
	return u
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func (e *engine) eligible(u *placeUnit) []int {
	if u.anchor >= 0 {
		if hasLabels(&e.hosts[u.anchor], u.labels) {
			return []int{u.anchor}
		}
		return nil
	}
	sig := labelSig(u.labels)
	if hs, ok := e.labelSets[sig]; ok {
		return hs
	}
	hs := []int{}
	for i := range e.hosts {
		if e.hosts[i].usable() && hasLabels(&e.hosts[i], u.labels) {
			hs = append(hs, i)
		}
	}
	e.labelSets[sig] = hs
	return hs
}

func (e *engine) placeUnit(u *placeUnit) {
	cands := e.eligible(u)
	for _, g := range u.anti {
		for h := range e.anti[g] {
			e.blocked[h] = true
		}
	}
	best := -1
	var bestA, bestB float64
	for _, h := range cands {
		if e.blocked[h] {
			continue
		}
		hs := &e.hosts[h]
		rc, rm := hs.freeC-u.c, hs.freeM-u.m
		if rc < 0 || rm < 0 {
			continue
		}
		fc, fm := float64(rc)*hs.invC, float64(rm)*hs.invM
		var a, b float64
		if e.pack {
			// Smaller is better: least room left over.
			a, b = fc+fm, min(fc, fm)
		} else {
			// Larger is better, so negate to share the comparison.
			a, b = -min(fc, fm), -(fc + fm)
		}
		if best < 0 || a < bestA || (a == bestA && b < bestB) {
			best, bestA, bestB = h, a, b
		}
	}
	if best < 0 {
		e.explain(u, cands)
	}
	for _, g := range u.anti {
		for h := range e.anti[g] {
			e.blocked[h] = false
		}
	}
	if best < 0 {
		return
	}
	hs := &e.hosts[best]
	hs.freeC -= u.c
	hs.freeM -= u.m
	for _, k := range u.keys {
		k.host = best
		e.occupy(k)
	}
}

func (e *engine) fail(keys []*keyState, constraint, msg string) {
	names := make([]string, len(keys))
	for i, k := range keys {
		names[i] = k.key
		k.failed = true
	}
	sort.Strings(names)
	e.failures = append(e.failures, Failure{Keys: names, Constraint: constraint, Message: msg})
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func labelSig(l map[string]string) string {
	if len(l) == 0 {
		return ""
	}
	return fmtLabels(l)
}

// fmtLabels renders labels as sorted k=v pairs, the way users write them.
func fmtLabels(l map[string]string) string {
	parts := make([]string, 0, len(l))
	for _, k := range sortedKeys(l) {
		parts = append(parts, k+"="+l[k])
	}
	return strings.Join(parts, ",")
}

func quoteKeys(keys []string) string {
	if len(keys) == 1 {
		return fmt.Sprintf("request %q", keys[0])
	}
	q := make([]string, len(keys))
	for i, k := range keys {
		q[i] = fmt.Sprintf("%q", k)
	}
	return "requests " + strings.Join(q, ", ")
}
