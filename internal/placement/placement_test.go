package placement

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
)

// hostsN returns n identical healthy hosts named host-a, host-b, ...
func hostsN(n int, cpus, mem int64) []Host {
	hs := make([]Host, n)
	for i := range hs {
		hs[i] = Host{Name: fmt.Sprintf("host-%c", 'a'+i), Healthy: true, CPUs: cpus, MemoryMiB: mem}
	}
	return hs
}

func mustPlace(t *testing.T, in Input) Result {
	t.Helper()
	res, err := Place(in)
	if err != nil {
		t.Fatalf("Place: %v", err)
	}
	return res
}

func countPerHost(a map[string]string) map[string]int {
	c := map[string]int{}
	for _, h := range a {
		c[h]++
	}
	return c
}

func reqs(prefix string, n int, r Request) map[string]Request {
	m := map[string]Request{}
	for i := 1; i <= n; i++ {
		m[fmt.Sprintf("%s-%d", prefix, i)] = r
	}
	return m
}

func TestSpreadBalances(t *testing.T) {
	res := mustPlace(t, Input{Hosts: hostsN(3, 8, 16384), Requests: reqs("vm", 6, Request{VCPU: 1, MemoryMiB: 1024})})
	for h, n := range countPerHost(res.Assignments) {
		if n != 2 {
			t.Errorf("%s holds %d VMs, want 2: %v", h, n, res.Assignments)
		}
	}
	// An already busy host gets less.
	hs := hostsN(2, 8, 16384)
	hs[0].AllocatedVCPU, hs[0].AllocatedMemoryMiB = 6, 12288
	res = mustPlace(t, Input{Hosts: hs, Requests: reqs("vm", 3, Request{VCPU: 1, MemoryMiB: 1024})})
	if c := countPerHost(res.Assignments); c["host-b"] != 3 {
		t.Errorf("spread ignored existing load: %v", res.Assignments)
	}
}

func TestPackFills(t *testing.T) {
	res := mustPlace(t, Input{Hosts: hostsN(3, 8, 16384), Strategy: "pack", Requests: reqs("vm", 6, Request{VCPU: 2, MemoryMiB: 1024})})
	c := countPerHost(res.Assignments)
	if c["host-a"] != 4 || c["host-b"] != 2 || c["host-c"] != 0 {
		t.Errorf("pack = %v, want 4 on host-a, 2 on host-b", c)
	}
	// Best fit: the fullest host that still fits wins, even if it sorts last.
	hs := hostsN(3, 8, 16384)
	hs[2].AllocatedVCPU, hs[2].AllocatedMemoryMiB = 6, 8192
	res = mustPlace(t, Input{Hosts: hs, Strategy: "pack", Requests: reqs("vm", 1, Request{VCPU: 2, MemoryMiB: 1024})})
	if res.Assignments["vm-1"] != "host-c" {
		t.Errorf("pack put vm-1 on %s, want host-c", res.Assignments["vm-1"])
	}
}

func TestCapacityCountedWithinOneComputation(t *testing.T) {
	hs := hostsN(2, 4, 8192)
	for _, strat := range []string{"spread", "pack"} {
		res := mustPlace(t, Input{Hosts: hs, Strategy: strat, Requests: reqs("vm", 2, Request{VCPU: 3, MemoryMiB: 1024})})
		if res.Assignments["vm-1"] == res.Assignments["vm-2"] {
			t.Errorf("%s: both 3-vCPU VMs on one 4-CPU host: %v", strat, res.Assignments)
		}
	}
	_, err := Place(Input{Hosts: hs, Requests: reqs("vm", 3, Request{VCPU: 3, MemoryMiB: 1024})})
	var ue *UnsatisfiableError
	if !errors.As(err, &ue) || !reflect.DeepEqual(ue.Keys(), []string{"vm-3"}) {
		t.Fatalf("err = %v, want vm-3 unsatisfiable", err)
	}
	want := `request "vm-3" (vcpu 3, memory_mib 1024): not enough capacity: host-a has 1 vCPU / 7168 MiB free, host-b has 1 vCPU / 7168 MiB free`
	if err.Error() != want {
		t.Errorf("error\n got: %s\nwant: %s", err, want)
	}
}

func TestOvercommit(t *testing.T) {
	hs := hostsN(1, 4, 4096)
	hs[0].CPUOvercommit, hs[0].MemoryOvercommit = 4, 1.5
	if c := hs[0].Capacity(); c != (Resources{16, 6144}) {
		t.Fatalf("capacity = %+v", c)
	}
	mustPlace(t, Input{Hosts: hs, Requests: reqs("vm", 4, Request{VCPU: 4, MemoryMiB: 1536})})
	if _, err := Place(Input{Hosts: hs, Requests: reqs("vm", 5, Request{VCPU: 4, MemoryMiB: 1})}); err == nil {
		t.Error("17th..20th vCPU admitted on a 16-vCPU host")
	}
}

func TestAntiAffinity(t *testing.T) {
	hs := hostsN(3, 16, 65536)
	in := Input{Hosts: hs, Strategy: "pack", Requests: reqs("web", 3, Request{VCPU: 1, MemoryMiB: 512, AntiAffinityGroup: "web"})}
	res := mustPlace(t, in)
	if len(countPerHost(res.Assignments)) != 3 {
		t.Fatalf("anti-affinity violated: %v", res.Assignments)
	}
	in.Requests = reqs("web", 4, Request{VCPU: 1, MemoryMiB: 512, AntiAffinityGroup: "web"})
	in.Previous = res.Assignments
	_, err := Place(in)
	want := `request "web-4" (vcpu 1, memory_mib 512): no host satisfies anti_affinity_group "web": hosts host-a, host-b, host-c already hold members web-1, web-2, web-3`
	if err == nil || err.Error() != want {
		t.Errorf("error\n got: %v\nwant: %s", err, want)
	}
	// Other groups are unaffected.
	in.Requests["db-1"] = Request{VCPU: 1, MemoryMiB: 512, AntiAffinityGroup: "db"}
	delete(in.Requests, "web-4")
	mustPlace(t, in)
}

func TestAntiAffinityAndCapacityMessage(t *testing.T) {
	hs := hostsN(3, 4, 8192)
	hs[2].AllocatedVCPU = 4
	in := Input{Hosts: hs, Requests: map[string]Request{
		"web-1": {VCPU: 1, MemoryMiB: 512, AntiAffinityGroup: "web"},
		"web-2": {VCPU: 1, MemoryMiB: 512, AntiAffinityGroup: "web"},
	}, Previous: map[string]string{"web-1": "host-a"}}
	in.Requests["web-2"] = Request{VCPU: 5, MemoryMiB: 512, AntiAffinityGroup: "web"}
	_, err := Place(in)
	want := `request "web-2" (vcpu 5, memory_mib 512): not enough capacity: host-b has 4 vCPU / 8192 MiB free, host-c has 0 vCPU / 8192 MiB free; excluded by anti_affinity_group "web": host host-a already holds members web-1`
	if err == nil || err.Error() != want {
		t.Errorf("error\n got: %v\nwant: %s", err, want)
	}
}

func TestAffinity(t *testing.T) {
	hs := hostsN(3, 16, 65536)
	in := Input{Hosts: hs, Requests: map[string]Request{
		"app-1": {VCPU: 4, MemoryMiB: 4096, AffinityGroup: "app"},
		"app-2": {VCPU: 4, MemoryMiB: 4096, AffinityGroup: "app"},
		"app-3": {VCPU: 4, MemoryMiB: 4096, AffinityGroup: "app"},
		"other": {VCPU: 1, MemoryMiB: 1024},
	}}
	res := mustPlace(t, in)
	a := res.Assignments
	if a["app-1"] != a["app-2"] || a["app-2"] != a["app-3"] {
		t.Fatalf("affinity violated: %v", a)
	}
	if a["other"] == a["app-1"] {
		t.Errorf("spread put other with the 12-vCPU group: %v", a)
	}

	// A new member follows the kept ones, even where spread would not go.
	in.Previous = a
	in.Requests["app-4"] = Request{VCPU: 1, MemoryMiB: 1024, AffinityGroup: "app"}
	res = mustPlace(t, in)
	if res.Assignments["app-4"] != a["app-1"] {
		t.Errorf("app-4 on %s, want the group's host %s", res.Assignments["app-4"], a["app-1"])
	}
	if m := res.Moved["app-4"]; m.Reason != ReasonNew || len(res.Moved) != 1 {
		t.Errorf("moved = %+v", res.Moved)
	}

	// It cannot make room by moving the kept members: the plan fails.
	in.Requests["app-4"] = Request{VCPU: 8, MemoryMiB: 1024, AffinityGroup: "app"}
	_, err := Place(in)
	want := fmt.Sprintf(`request "app-4" (vcpu 8, memory_mib 1024): affinity_group "app" is anchored on %[1]s by kept members app-1, app-2, app-3, which cannot take the rest: not enough capacity: %[1]s has 4 vCPU / 53248 MiB free`, a["app-1"])
	if err == nil || err.Error() != want {
		t.Errorf("error\n got: %v\nwant: %s", err, want)
	}
	var ue *UnsatisfiableError
	if errors.As(err, &ue) && ue.Failures[0].Constraint != "affinity_group" {
		t.Errorf("constraint = %q", ue.Failures[0].Constraint)
	}

	// A group too big for any host fails as a whole, naming every member.
	_, err = Place(Input{Hosts: hs, Requests: reqs("big", 3, Request{VCPU: 6, MemoryMiB: 1024, AffinityGroup: "big"})})
	want = `requests "big-1", "big-2", "big-3" (affinity_group "big", together vcpu 18, memory_mib 3072): not enough capacity: host-a has 16 vCPU / 65536 MiB free, host-b has 16 vCPU / 65536 MiB free, host-c has 16 vCPU / 65536 MiB free`
	if err == nil || err.Error() != want {
		t.Errorf("error\n got: %v\nwant: %s", err, want)
	}
}

func TestAffinityDisplacedTogether(t *testing.T) {
	hs := hostsN(3, 16, 65536)
	in := Input{Hosts: hs, Requests: reqs("app", 3, Request{VCPU: 2, MemoryMiB: 2048, AffinityGroup: "app"}),
		Previous: map[string]string{"app-1": "host-a", "app-2": "host-a", "app-3": "host-a"}}
	hs[0].Healthy = false
	res := mustPlace(t, in)
	to := res.Assignments["app-1"]
	if to == "host-a" || res.Assignments["app-2"] != to || res.Assignments["app-3"] != to {
		t.Fatalf("group not moved together: %v", res.Assignments)
	}
	if res.Moved["app-2"].Reason != ReasonHostUnhealthy {
		t.Errorf("reason = %+v", res.Moved["app-2"])
	}

	// Members split over two hosts: the majority host wins.
	hs[0].Healthy = true
	in.Previous = map[string]string{"app-1": "host-c", "app-2": "host-b", "app-3": "host-b"}
	res = mustPlace(t, in)
	for k, h := range res.Assignments {
		if h != "host-b" {
			t.Errorf("%s on %s, want host-b", k, h)
		}
	}
	if m := res.Moved["app-1"]; m.From != "host-c" || m.Reason != ReasonAffinity || len(res.Moved) != 1 {
		t.Errorf("moved = %+v", res.Moved)
	}

	// The rest cannot join the anchor: the plan fails rather than moving
	// kept members behind the user's back.
	hs[1].CPUs = 4
	_, err := Place(in)
	want := `request "app-1" (vcpu 2, memory_mib 2048): affinity_group "app" is anchored on host-b by kept members app-2, app-3, which cannot take the rest: not enough capacity: host-b has 0 vCPU / 61440 MiB free`
	if err == nil || err.Error() != want {
		t.Errorf("error\n got: %v\nwant: %s", err, want)
	}

	// Kept members that together no longer fit (host shrank) move as a unit.
	in.Previous = map[string]string{"app-1": "host-b", "app-2": "host-b", "app-3": "host-b"}
	res = mustPlace(t, in)
	if a := res.Assignments; a["app-1"] != a["app-2"] || a["app-2"] != a["app-3"] || a["app-1"] == "host-b" {
		t.Errorf("assignments = %v", a)
	}
	for _, k := range []string{"app-1", "app-2", "app-3"} {
		if m := res.Moved[k]; m.Reason != ReasonCapacity || m.From != "host-b" {
			t.Errorf("%s: move = %+v", k, m)
		}
	}
}

func TestAffinityContradictions(t *testing.T) {
	hs := hostsN(3, 16, 65536)
	_, err := Place(Input{Hosts: hs, Requests: map[string]Request{
		"a": {VCPU: 1, MemoryMiB: 1, AffinityGroup: "g", AntiAffinityGroup: "x"},
		"b": {VCPU: 1, MemoryMiB: 1, AffinityGroup: "g", AntiAffinityGroup: "x"},
	}})
	if err == nil || !strings.Contains(err.Error(), `"a" and "b" are also in anti_affinity_group "x"`) {
		t.Errorf("err = %v", err)
	}
	_, err = Place(Input{Hosts: hs, Requests: map[string]Request{
		"a": {VCPU: 1, MemoryMiB: 1, AffinityGroup: "g", HostLabels: map[string]string{"zone": "a"}},
		"b": {VCPU: 1, MemoryMiB: 1, AffinityGroup: "g", HostLabels: map[string]string{"zone": "b"}},
	}})
	if err == nil || !strings.Contains(err.Error(), `"a" requires host_labels zone=a and "b" requires zone=b`) {
		t.Errorf("err = %v", err)
	}
}

func TestLabels(t *testing.T) {
	hs := hostsN(3, 16, 65536)
	hs[0].Labels = map[string]string{"zone": "a"}
	hs[1].Labels = map[string]string{"zone": "b", "gpu": "yes"}
	hs[2].Labels = map[string]string{"zone": "b"}
	res := mustPlace(t, Input{Hosts: hs, Requests: map[string]Request{
		"gpu-1": {VCPU: 1, MemoryMiB: 1, HostLabels: map[string]string{"gpu": "yes", "zone": "b"}},
		"b-1":   {VCPU: 1, MemoryMiB: 1, HostLabels: map[string]string{"zone": "b"}},
		"b-2":   {VCPU: 1, MemoryMiB: 1, HostLabels: map[string]string{"zone": "b"}},
	}})
	if res.Assignments["gpu-1"] != "host-b" || res.Assignments["b-1"] == "host-a" || res.Assignments["b-2"] == "host-a" {
		t.Errorf("labels ignored: %v", res.Assignments)
	}
	_, err := Place(Input{Hosts: hs, Requests: map[string]Request{"x": {VCPU: 1, MemoryMiB: 1, HostLabels: map[string]string{"zone": "c"}}}})
	want := `request "x" (vcpu 1, memory_mib 1): no healthy host carries host_labels zone=c (host-a: zone=a; host-b: gpu=yes,zone=b; host-c: zone=b)`
	if err == nil || err.Error() != want {
		t.Errorf("error\n got: %v\nwant: %s", err, want)
	}
	// A label removed from the previous host moves the key.
	res = mustPlace(t, Input{Hosts: hs, Previous: map[string]string{"x": "host-a"},
		Requests: map[string]Request{"x": {VCPU: 1, MemoryMiB: 1, HostLabels: map[string]string{"zone": "b"}}}})
	if m := res.Moved["x"]; m.Reason != ReasonLabels || m.From != "host-a" {
		t.Errorf("moved = %+v", res.Moved)
	}
}

func TestStability(t *testing.T) {
	hs := hostsN(5, 32, 131072)
	in := Input{Hosts: hs, Requests: map[string]Request{}}
	prev := map[string]string{}
	for i := 1; i <= 40; i++ {
		in.Requests[fmt.Sprintf("vm-%02d", i)] = Request{VCPU: int64(1 + i%4), MemoryMiB: int64(1024 * (1 + i%3)), AntiAffinityGroup: fmt.Sprintf("g%d", i%10)}
		in.Previous = prev
		res := mustPlace(t, in)
		for k, h := range prev {
			if res.Assignments[k] != h {
				t.Fatalf("adding vm-%02d moved %s from %s to %s", i, k, h, res.Assignments[k])
			}
		}
		if len(res.Moved) != 1 {
			t.Fatalf("moved = %v, want only the new key", res.Moved)
		}
		prev = res.Assignments
	}

	// Removing a host re-places only its keys.
	in.Previous = prev
	in.Hosts = append([]Host(nil), hs[1:]...)
	res := mustPlace(t, in)
	for k, h := range prev {
		if h == "host-a" {
			if m := res.Moved[k]; m.Reason != ReasonHostRemoved || m.From != "host-a" || m.To == "host-a" {
				t.Errorf("%s: move = %+v", k, m)
			}
		} else if res.Assignments[k] != h {
			t.Errorf("%s moved from %s although its host stayed", k, h)
		}
	}

	// An unhealthy host's keys move, the others stay.
	in.Hosts = append([]Host(nil), hs...)
	in.Hosts[2].Healthy = false
	res = mustPlace(t, in)
	for k, h := range prev {
		if h == "host-c" {
			if m := res.Moved[k]; m.Reason != ReasonHostUnhealthy || m.To == "host-c" {
				t.Errorf("%s: move = %+v", k, m)
			}
		} else if res.Assignments[k] != h {
			t.Errorf("%s moved from %s although its host is fine", k, h)
		}
	}

	// Removing keys moves nobody else.
	in.Hosts = hs
	delete(in.Requests, "vm-07")
	res = mustPlace(t, in)
	if len(res.Moved) != 0 {
		t.Errorf("moved = %v", res.Moved)
	}
}

func TestExistingNotDoubleCounted(t *testing.T) {
	hs := hostsN(2, 8, 16384)
	// Two 4-vCPU VMs already run on host-a and are in its allocation.
	hs[0].AllocatedVCPU, hs[0].AllocatedMemoryMiB = 8, 8192
	in := Input{Hosts: hs, Requests: reqs("vm", 2, Request{VCPU: 4, MemoryMiB: 4096}),
		Previous: map[string]string{"vm-1": "host-a", "vm-2": "host-a"},
		Existing: map[string]Resources{"vm-1": {4, 4096}, "vm-2": {4, 4096}}}
	res := mustPlace(t, in)
	if len(res.Moved) != 0 {
		t.Fatalf("existing VMs moved: %v", res.Moved)
	}
	// Without Existing they are counted twice and one is displaced.
	in.Existing = nil
	res = mustPlace(t, in)
	if m := res.Moved["vm-2"]; m.Reason != ReasonCapacity || m.To != "host-b" {
		t.Errorf("moved = %+v", res.Moved)
	}
	// Growth beyond the free capacity displaces the grown VM only.
	in.Existing = map[string]Resources{"vm-1": {4, 4096}, "vm-2": {4, 4096}}
	in.Requests["vm-2"] = Request{VCPU: 6, MemoryMiB: 4096}
	res = mustPlace(t, in)
	if res.Assignments["vm-1"] != "host-a" || res.Moved["vm-2"].Reason != ReasonCapacity || res.Assignments["vm-2"] != "host-b" {
		t.Errorf("assignments = %v, moved = %+v", res.Assignments, res.Moved)
	}
	// An over-committed host (ratio lowered) keeps VMs that did not grow.
	in.Requests["vm-2"] = Request{VCPU: 4, MemoryMiB: 4096}
	in.Hosts[0].CPUs = 4
	res = mustPlace(t, in)
	if len(res.Moved) != 0 {
		t.Errorf("moved = %v", res.Moved)
	}
}

func TestKeptAntiAffinityConflict(t *testing.T) {
	hs := hostsN(2, 8, 16384)
	in := Input{Hosts: hs, Requests: reqs("web", 2, Request{VCPU: 1, MemoryMiB: 1, AntiAffinityGroup: "web"}),
		Previous: map[string]string{"web-1": "host-a", "web-2": "host-a"}}
	res := mustPlace(t, in)
	if res.Assignments["web-1"] != "host-a" || res.Moved["web-2"].Reason != ReasonAntiAffinity {
		t.Errorf("assignments %v moved %+v", res.Assignments, res.Moved)
	}
	// The one with a running VM wins over the smaller key.
	in.Existing = map[string]Resources{"web-2": {1, 1}}
	res = mustPlace(t, in)
	if res.Assignments["web-2"] != "host-a" || res.Moved["web-1"].Reason != ReasonAntiAffinity {
		t.Errorf("assignments %v moved %+v", res.Assignments, res.Moved)
	}
}

func TestValidation(t *testing.T) {
	hs := hostsN(1, 8, 16384)
	for name, in := range map[string]Input{
		"strategy":  {Hosts: hs, Strategy: "random"},
		"vcpu":      {Hosts: hs, Requests: map[string]Request{"a": {VCPU: 0, MemoryMiB: 1}}},
		"memory":    {Hosts: hs, Requests: map[string]Request{"a": {VCPU: 1, MemoryMiB: -1}}},
		"duplicate": {Hosts: append(hostsN(1, 1, 1), hostsN(1, 1, 1)...)},
		"ratio":     {Hosts: []Host{{Name: "h", CPUOvercommit: -1}}},
	} {
		_, err := Place(in)
		if !errors.Is(err, ErrInvalidInput) {
			t.Errorf("%s: err = %v, want ErrInvalidInput", name, err)
		}
	}
	_, err := Place(Input{Hosts: hs, Requests: map[string]Request{"a": {VCPU: 0, MemoryMiB: 1}}})
	if !strings.Contains(err.Error(), `request "a": vcpu must be > 0, got 0`) {
		t.Errorf("err = %v", err)
	}
	_, err = Place(Input{Requests: map[string]Request{"a": {VCPU: 1, MemoryMiB: 1}}})
	if err == nil || err.Error() != `request "a" (vcpu 1, memory_mib 1): no hosts are available` {
		t.Errorf("err = %v", err)
	}
	hs[0].Healthy = false
	_, err = Place(Input{Hosts: hs, Requests: map[string]Request{"a": {VCPU: 1, MemoryMiB: 1}}})
	if err == nil || err.Error() != `request "a" (vcpu 1, memory_mib 1): no healthy host (host-a unhealthy)` {
		t.Errorf("err = %v", err)
	}
}

func TestMultipleFailuresReported(t *testing.T) {
	_, err := Place(Input{Hosts: hostsN(1, 2, 1024), Requests: map[string]Request{
		"ok":  {VCPU: 1, MemoryMiB: 512},
		"big": {VCPU: 4, MemoryMiB: 512},
		"far": {VCPU: 1, MemoryMiB: 1, HostLabels: map[string]string{"zone": "z"}},
	}})
	var ue *UnsatisfiableError
	if !errors.As(err, &ue) || !reflect.DeepEqual(ue.Keys(), []string{"big", "far"}) {
		t.Fatalf("err = %v", err)
	}
	if ue.Failures[0].Constraint != "capacity" || ue.Failures[1].Constraint != "host_labels" {
		t.Errorf("failures = %+v", ue.Failures)
	}
}

func TestDeterministic(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	hosts := make([]Host, 20)
	for i := range hosts {
		hosts[i] = Host{Name: fmt.Sprintf("h%02d", i), Healthy: true, CPUs: 32, MemoryMiB: 65536,
			Labels: map[string]string{"zone": fmt.Sprint(i % 3)}}
	}
	type kv struct {
		k string
		r Request
	}
	var items []kv
	for i := range 150 {
		r := Request{VCPU: 1 + rng.Int64N(4), MemoryMiB: 512 * (1 + rng.Int64N(8))}
		if i%5 == 0 {
			r.AntiAffinityGroup = fmt.Sprint("a", i%7)
		}
		if i%11 == 0 {
			r.AffinityGroup = fmt.Sprint("g", i%3)
		}
		if i%13 == 0 {
			r.HostLabels = map[string]string{"zone": fmt.Sprint(i % 3)}
		}
		items = append(items, kv{fmt.Sprintf("vm-%d", i), r})
	}
	build := func(seed uint64) Input {
		r := rand.New(rand.NewPCG(seed, seed))
		hs := append([]Host(nil), hosts...)
		r.Shuffle(len(hs), func(i, j int) { hs[i], hs[j] = hs[j], hs[i] })
		its := append([]kv(nil), items...)
		r.Shuffle(len(its), func(i, j int) { its[i], its[j] = its[j], its[i] })
		m := map[string]Request{}
		for _, it := range its {
			m[it.k] = it.r
		}
		return Input{Hosts: hs, Requests: m}
	}
	for _, strat := range []string{"spread", "pack"} {
		var first Result
		for seed := range uint64(5) {
			in := build(seed)
			in.Strategy = strat
			res := mustPlace(t, in)
			if seed == 0 {
				first = res
			} else if !reflect.DeepEqual(res, first) {
				t.Fatalf("%s: result differs with input order %d", strat, seed)
			}
		}
	}
}
