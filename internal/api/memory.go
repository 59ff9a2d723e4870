package api

import (
	"fmt"
	"slices"
	"strings"
)

// MinHugepageKiB is the smallest huge page x86 hosts have (2 MiB). A
// hugepage-backed guest's memory must be a multiple of the host's page
// size; this is what can be checked without knowing the host.
const MinHugepageKiB = 2048

// HugepagesNeeded is how many huge pages of sizeKiB a VM's memory takes:
// its whole memory (max_memory_mib where set), which QEMU maps from huge
// pages when it starts; the balloon cannot hand them back to the host.
func HugepagesNeeded(spec VMSpec, sizeKiB int64) int64 {
	if !spec.Hugepages || sizeKiB <= 0 {
		return 0
	}
	kib := VMMemoryMiB(spec) * 1024
	return (kib + sizeKiB - 1) / sizeKiB
}

// ParseNodeSet parses a host NUMA node set ("0", "0-1", "0,2"), the same
// syntax as a CPU set.
func ParseNodeSet(s string) ([]int, error) {
	set, err := ParseCPUSet(s)
	if err != nil {
		return nil, fmt.Errorf("%q is not a NUMA node set like \"0\", \"0-1\" or \"0,2\"", s)
	}
	return set, nil
}

// ParseGuestCPUSet parses a set of guest vCPUs ("0-1", "2,3").
func ParseGuestCPUSet(s string) ([]int, error) {
	set, err := ParseCPUSet(s)
	if err != nil {
		return nil, fmt.Errorf("%q is not a vCPU set like \"0\", \"0-3\" or \"0,2\"", s)
	}
	return set, nil
}

// CheckNUMA checks a guest NUMA topology against the VM's size: each cell
// has vCPUs and memory, the cells' vCPU sets are disjoint and together are
// exactly 0..vcpu-1, and their memory adds up to memory_mib. libvirt sizes
// the guest from its cells, so a balloon ceiling above memory_mib cannot be
// combined with cells. Used by the host (400) and at plan time.
func CheckNUMA(cells []NUMACell, vcpu, memoryMiB, maxMemoryMiB int64) error {
	if len(cells) == 0 {
		return nil
	}
	owner := map[int]int{}
	var sum int64
	for i, c := range cells {
		set, err := ParseGuestCPUSet(c.CPUs)
		if err != nil {
			return fmt.Errorf("numa[%d].cpus: %s", i, err)
		}
		for _, v := range set {
			if int64(v) >= vcpu {
				return fmt.Errorf("numa[%d].cpus %q names vCPU %d, but the VM has %d vCPUs (0-%d)", i, c.CPUs, v, vcpu, vcpu-1)
			}
			if j, dup := owner[v]; dup {
				return fmt.Errorf("numa[%d].cpus %q and numa[%d].cpus %q both name vCPU %d; each vCPU belongs to one cell", j, cells[j].CPUs, i, c.CPUs, v)
			}
			owner[v] = i
		}
		if c.MemoryMiB <= 0 {
			return fmt.Errorf("numa[%d].memory_mib must be positive", i)
		}
		sum += c.MemoryMiB
		if c.HostNodes != "" {
			if _, err := ParseNodeSet(c.HostNodes); err != nil {
				return fmt.Errorf("numa[%d].host_nodes: %s", i, err)
			}
		}
	}
	if int64(len(owner)) != vcpu {
		var missing []string
		for v := range vcpu {
			if _, ok := owner[int(v)]; !ok {
				missing = append(missing, fmt.Sprint(v))
			}
		}
		return fmt.Errorf("numa cells must cover every vCPU 0-%d; vCPU %s is in no cell", vcpu-1, strings.Join(missing, ", "))
	}
	if sum != memoryMiB {
		return fmt.Errorf("numa cells have %d MiB of memory together, but memory_mib is %d; they must add up to it", sum, memoryMiB)
	}
	if maxMemoryMiB != 0 && maxMemoryMiB != memoryMiB {
		return fmt.Errorf("max_memory_mib (%d) must equal memory_mib (%d) with numa cells: the cells fix the guest's memory", maxMemoryMiB, memoryMiB)
	}
	return nil
}

// CheckHugepageSizes checks that a hugepage-backed guest's memory, and
// each NUMA cell's, is a whole number of pages of sizeKiB: QEMU cannot map
// part of a huge page.
func CheckHugepageSizes(spec VMSpec, sizeKiB int64) error {
	if !spec.Hugepages || sizeKiB <= 0 {
		return nil
	}
	if kib := VMMemoryMiB(spec) * 1024; kib%sizeKiB != 0 {
		return fmt.Errorf("hugepages: the guest's memory (%d MiB) is not a multiple of the huge page size (%d KiB)", VMMemoryMiB(spec), sizeKiB)
	}
	for i, c := range spec.NUMA {
		if (c.MemoryMiB*1024)%sizeKiB != 0 {
			return fmt.Errorf("hugepages: numa[%d].memory_mib (%d) is not a multiple of the huge page size (%d KiB)", i, c.MemoryMiB, sizeKiB)
		}
	}
	return nil
}

// validateMemoryLayout checks hugepages, NUMA cells and emulator pinning,
// as far as they can be checked without the host.
func validateMemoryLayout(spec *VMSpec) error {
	if err := CheckNUMA(spec.NUMA, spec.VCPU, spec.MemoryMiB, spec.MaxMemoryMiB); err != nil {
		return invalidf("%s", err)
	}
	if err := CheckHugepageSizes(*spec, MinHugepageKiB); err != nil {
		return invalidf("%s", err)
	}
	if c := spec.CPU; c != nil && c.EmulatorPinning != "" {
		if _, err := ParseCPUSet(c.EmulatorPinning); err != nil {
			return invalidf("cpu.emulator_pinning: %s", err)
		}
	}
	return nil
}

// SameSet reports whether two CPU or node sets name the same members
// ("0,1" and "0-1"); unparsable sets are the same only when equal.
func SameSet(a, b string) bool {
	if a == b {
		return true
	}
	x, err1 := ParseCPUSet(a)
	y, err2 := ParseCPUSet(b)
	return err1 == nil && err2 == nil && slices.Equal(x, y)
}
