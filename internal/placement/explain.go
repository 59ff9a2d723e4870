package placement

import (
	"fmt"
	"sort"
	"strings"
)

// maxListed bounds how many hosts an error message lists, so a 1,000-host
// fleet yields a readable plan error rather than a wall of text.
const maxListed = 8

func (u *placeUnit) describe() string {
	if len(u.keys) == 1 {
		k := u.keys[0]
		return fmt.Sprintf("request %q (vcpu %d, memory_mib %d)", k.key, k.req.VCPU, k.req.MemoryMiB)
	}
	names := make([]string, len(u.keys))
	for i, k := range u.keys {
		names[i] = k.key
	}
	return fmt.Sprintf("%s (affinity_group %q, together vcpu %d, memory_mib %d)", quoteKeys(names), u.group, u.c, u.m)
}

func (e *engine) freeText(h int) string {
	hs := &e.hosts[h]
	return fmt.Sprintf("%s has %d vCPU / %d MiB free", hs.name, max(0, hs.freeC), max(0, hs.freeM))
}

// antiHolders lists, per anti-affinity group of u, the candidate hosts that
// already hold a member and which members those are.
func (e *engine) antiHolders(u *placeUnit, cands []int) []string {
	var parts []string
	for _, g := range u.anti {
		var hosts, members []string
		for _, h := range cands {
			if ms, ok := e.anti[g][h]; ok {
				hosts = append(hosts, e.hosts[h].name)
				members = append(members, ms...)
			}
		}
		if len(hosts) == 0 {
			continue
		}
		sort.Strings(members)
		parts = append(parts, fmt.Sprintf("anti_affinity_group %q: %s %s already %s members %s",
			g, plural(len(hosts), "host", "hosts"), listNames(hosts), plural(len(hosts), "holds", "hold"), listNames(members)))
	}
	return parts
}

// explain records why u fits on none of cands (the healthy hosts carrying
// its labels, or just its anchor). Blocked flags are still set by placeUnit.
func (e *engine) explain(u *placeUnit, cands []int) {
	who := u.describe()
	if u.anchor >= 0 {
		hs := &e.hosts[u.anchor]
		why := ""
		switch {
		case !hasLabels(hs, u.labels):
			why = fmt.Sprintf("%s lacks host_labels %s", hs.name, fmtLabels(u.labels))
		case e.blocked[u.anchor]:
			why = strings.Join(e.antiHolders(u, cands), "; ")
		default:
			why = "not enough capacity: " + e.freeText(u.anchor)
		}
		e.fail(u.keys, "affinity_group", fmt.Sprintf("%s: affinity_group %q is anchored on %s by kept %s %s, which cannot take the rest: %s",
			who, u.group, hs.name, plural(len(u.anchorKeys), "member", "members"), listNames(u.anchorKeys), why))
		return
	}

	var healthy, unhealthy, maint []string
	for i := range e.hosts {
		switch {
		case e.hosts[i].usable():
			healthy = append(healthy, e.hosts[i].name)
		case e.hosts[i].healthy:
			maint = append(maint, e.hosts[i].name)
		default:
			unhealthy = append(unhealthy, e.hosts[i].name)
		}
	}
	switch {
	case len(e.hosts) == 0:
		e.fail(u.keys, "hosts", who+": no hosts are available")
		return
	case len(healthy) == 0:
		var why []string
		if len(unhealthy) > 0 {
			why = append(why, listNames(unhealthy)+" unhealthy")
		}
		if len(maint) > 0 {
			why = append(why, listNames(maint)+" in maintenance")
		}
		e.fail(u.keys, "hosts", fmt.Sprintf("%s: no healthy host (%s)", who, strings.Join(why, "; ")))
		return
	case len(cands) == 0:
		e.fail(u.keys, "host_labels", fmt.Sprintf("%s: no healthy host carries host_labels %s (%s)", who, fmtLabels(u.labels), e.labelList()))
		return
	}

	var fitless []int
	for _, h := range cands {
		if !e.blocked[h] {
			fitless = append(fitless, h)
		}
	}
	labelNote := ""
	if len(u.labels) > 0 && len(cands) < len(healthy) {
		labelNote = fmt.Sprintf("; %d other healthy %s lack host_labels %s",
			len(healthy)-len(cands), plural(len(healthy)-len(cands), "host", "hosts"), fmtLabels(u.labels))
	}
	anti := e.antiHolders(u, cands)
	if len(fitless) == 0 {
		e.fail(u.keys, "anti_affinity_group", fmt.Sprintf("%s: no host satisfies %s%s", who, strings.Join(anti, "; "), labelNote))
		return
	}
	// Most free first, so the list shows how close the best hosts came.
	sort.SliceStable(fitless, func(i, j int) bool {
		a, b := &e.hosts[fitless[i]], &e.hosts[fitless[j]]
		fa := min(float64(a.freeC)*a.invC, float64(a.freeM)*a.invM)
		fb := min(float64(b.freeC)*b.invC, float64(b.freeM)*b.invM)
		return fa > fb
	})
	var frees []string
	for i, h := range fitless {
		if i == maxListed {
			frees = append(frees, fmt.Sprintf("and %d more with less free", len(fitless)-maxListed))
			break
		}
		frees = append(frees, e.freeText(h))
	}
	msg := fmt.Sprintf("%s: not enough capacity: %s", who, strings.Join(frees, ", "))
	if len(anti) > 0 {
		msg += "; excluded by " + strings.Join(anti, "; ")
	}
	e.fail(u.keys, "capacity", msg+labelNote)
}

// labelList shows healthy hosts' labels, so a label typo is easy to spot.
func (e *engine) labelList() string {
	var parts []string
	n := 0
	for i := range e.hosts {
		hs := &e.hosts[i]
		if !hs.usable() {
			continue
		}
		if n == maxListed {
			parts = append(parts, "...")
			break
		}
		n++
		l := fmtLabels(hs.labels)
		if l == "" {
			l = "no labels"
		}
		parts = append(parts, hs.name+": "+l)
	}
	return strings.Join(parts, "; ")
}

func listNames(names []string) string {
	if len(names) > maxListed*2 {
		return strings.Join(names[:maxListed*2], ", ") + fmt.Sprintf(" and %d more", len(names)-maxListed*2)
	}
	return strings.Join(names, ", ")
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
