package service

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// usesMemoryLayout reports whether spec asks for anything checkMemoryLayout
// checks against the host.
func usesMemoryLayout(spec api.VMSpec) bool {
	return spec.Hugepages || len(spec.NUMA) > 0 || (spec.CPU != nil && spec.CPU.EmulatorPinning != "")
}

// checkMemoryLayout checks against this host what api.ValidateVMSpec
// cannot: that NUMA cells bind to nodes the host has, that the emulator
// threads are pinned to CPUs it has, and that a hugepage-backed guest's
// memory is a whole number of the host's huge pages. Each is a 400.
func (s *Service) checkMemoryLayout(ctx context.Context, spec api.VMSpec) error {
	if !usesMemoryLayout(spec) {
		return nil
	}
	res, err := s.hv.Resources(ctx)
	if err != nil {
		return err
	}
	for i, c := range spec.NUMA {
		if c.HostNodes == "" {
			continue
		}
		set, err := api.ParseNodeSet(c.HostNodes)
		if err != nil {
			return invalid("numa[%d].host_nodes: %s", i, err)
		}
		for _, n := range set {
			if !slices.Contains(res.NUMANodes, n) {
				return invalid("numa[%d].host_nodes %q names NUMA node %d, but host %s has NUMA nodes %s",
					i, c.HostNodes, n, s.cfg.Name, intList(res.NUMANodes))
			}
		}
	}
	if c := spec.CPU; c != nil && c.EmulatorPinning != "" {
		set, err := api.ParseCPUSet(c.EmulatorPinning)
		if err != nil {
			return invalid("cpu.emulator_pinning: %s", err)
		}
		if last := set[len(set)-1]; int64(last) >= res.CPUs {
			return invalid("cpu.emulator_pinning %q names host CPU %d, but host %s has CPUs 0-%d", c.EmulatorPinning, last, s.cfg.Name, res.CPUs-1)
		}
	}
	if spec.Hugepages && res.Hugepages != nil {
		if err := api.CheckHugepageSizes(spec, res.Hugepages.SizeKiB); err != nil {
			return invalid("%s on host %s", err, s.cfg.Name)
		}
	}
	return nil
}

func intList(v []int) string {
	if len(v) == 0 {
		return "(none reported)"
	}
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = fmt.Sprint(n)
	}
	return strings.Join(s, ", ")
}

// fitsHugepages refuses a hugepage-backed VM whose memory the host's free
// huge pages cannot hold. Like the rest of admission, a defined VM counts
// whether it runs or not: pages a running VM holds are already out of
// Free, and those a stopped hugepage VM (or one being created) will take
// are held for it. The VM's own running pages come back to it when it
// restarts to take the change. Callers hold s.admission.
func (s *Service) fitsHugepages(vm string, wantMiB int64, res Resources) error {
	hp := res.Hugepages
	if hp == nil || hp.SizeKiB <= 0 {
		hp = &api.HostHugepages{SizeKiB: api.MinHugepageKiB}
	}
	pages := func(mib int64) int64 { return (mib*1024 + hp.SizeKiB - 1) / hp.SizeKiB }
	need := pages(wantMiB)
	avail, held := hp.Free, int64(0)
	for name, u := range res.HugepageVMs {
		switch {
		case name == vm && u.Running:
			avail += u.Pages
		case name != vm && !u.Running:
			held += u.Pages
		}
	}
	for _, r := range s.ledger.byID {
		if r.vm == vm || r.want.HugepageMiB == 0 {
			continue
		}
		if _, counted := res.HugepageVMs[r.vm]; !counted {
			held += pages(r.want.HugepageMiB)
		}
	}
	avail -= held
	if need <= avail {
		return nil
	}
	heldNote := ""
	if held > 0 {
		heldNote = fmt.Sprintf(", after %d held for stopped or arriving hugepage VMs", held)
	}
	return api.Errorf(api.CodeFull, "host %s has too few free huge pages: VM %s needs %d pages of %d KiB, %d free (%d in total%s); "+
		"reserve more (vm.nr_hugepages) or place the VM elsewhere", s.cfg.Name, vm, need, hp.SizeKiB, max(avail, 0), hp.Total, heldNote)
}

// hugepageAllocation is the huge-page part of an admission request.
func hugepageAllocation(spec api.VMSpec) int64 {
	if !spec.Hugepages {
		return 0
	}
	return api.VMMemoryMiB(spec)
}
