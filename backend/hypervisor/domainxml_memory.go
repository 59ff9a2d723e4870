package hypervisor

import (
	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// metaNUMA records a NUMA cell's sets as the VM asked for them: libvirt
// stores its own spelling ("0,1" becomes "0-1"), and read-back must return
// the request's so that an unchanged plan stays empty.
type metaNUMA struct {
	CPUs      string `xml:"cpus,attr"`
	HostNodes string `xml:"host-nodes,attr,omitempty"`
}

// buildMemoryLayout adds hugepage backing, the guest NUMA cells with their
// host-node binding, and the emulator threads' pinning to x.
func buildMemoryLayout(x *libvirtxml.Domain, spec *api.VMSpec, m *instanceMeta) {
	m.NUMA, m.EmulatorPin = nil, ""
	if spec.Hugepages {
		// The host's default page size: the one kvm-hostd counts in
		// /v1/host and admits against.
		x.MemoryBacking = &libvirtxml.DomainMemoryBacking{MemoryHugePages: &libvirtxml.DomainMemoryHugepages{}}
	}
	if len(spec.NUMA) > 0 {
		if x.CPU == nil {
			x.CPU = &libvirtxml.DomainCPU{}
		}
		x.CPU.Numa = &libvirtxml.DomainNuma{}
		for i, c := range spec.NUMA {
			id := uint(i)
			x.CPU.Numa.Cell = append(x.CPU.Numa.Cell, libvirtxml.DomainCell{ID: &id, CPUs: c.CPUs, Memory: uint(c.MemoryMiB), Unit: "MiB"})
			m.NUMA = append(m.NUMA, metaNUMA{CPUs: c.CPUs, HostNodes: c.HostNodes})
			if c.HostNodes != "" {
				if x.NUMATune == nil {
					x.NUMATune = &libvirtxml.DomainNUMATune{}
				}
				// strict: the cell's memory comes from these nodes or
				// the guest does not start, rather than silently
				// spilling to another node.
				x.NUMATune.MemNodes = append(x.NUMATune.MemNodes, libvirtxml.DomainNUMATuneMemNode{CellID: id, Mode: "strict", Nodeset: c.HostNodes})
			}
		}
	}
	if c := spec.CPU; c != nil && c.EmulatorPinning != "" {
		if x.CPUTune == nil {
			x.CPUTune = &libvirtxml.DomainCPUTune{}
		}
		x.CPUTune.EmulatorPin = &libvirtxml.DomainCPUTuneEmulatorPin{CPUSet: c.EmulatorPinning}
		m.EmulatorPin = c.EmulatorPinning
	}
}

// readMemoryLayout reads hugepages, NUMA cells and emulator pinning back
// into s (cpu is s.CPU before it is attached, so that an emulator pinning
// alone makes a cpu block).
func readMemoryLayout(x *libvirtxml.Domain, m *instanceMeta, s *api.VMSpec, cpu *api.CPU) {
	s.Hugepages = x.MemoryBacking != nil && x.MemoryBacking.MemoryHugePages != nil
	if x.CPU != nil && x.CPU.Numa != nil {
		nodes := map[uint]string{}
		if x.NUMATune != nil {
			for _, mn := range x.NUMATune.MemNodes {
				nodes[mn.CellID] = mn.Nodeset
			}
		}
		for i, c := range x.CPU.Numa.Cell {
			id := uint(i)
			if c.ID != nil {
				id = *c.ID
			}
			cell := api.NUMACell{CPUs: c.CPUs, MemoryMiB: memMiB(c.Memory, orDefault(c.Unit, "KiB")), HostNodes: nodes[id]}
			if i < len(m.NUMA) {
				if api.SameSet(m.NUMA[i].CPUs, cell.CPUs) {
					cell.CPUs = m.NUMA[i].CPUs
				}
				if api.SameSet(m.NUMA[i].HostNodes, cell.HostNodes) {
					cell.HostNodes = m.NUMA[i].HostNodes
				}
			}
			s.NUMA = append(s.NUMA, cell)
		}
	}
	if x.CPUTune != nil && x.CPUTune.EmulatorPin != nil {
		cpu.EmulatorPinning = x.CPUTune.EmulatorPin.CPUSet
		if api.SameSet(m.EmulatorPin, cpu.EmulatorPinning) {
			cpu.EmulatorPinning = m.EmulatorPin
		}
	}
}

// applyEmulatorPin re-pins QEMU's emulator threads without a restart: to
// the persistent definition and, when the domain runs, to the live
// process. An empty set unpins (all host CPUs, which libvirt records as no
// <emulatorpin>).
func applyEmulatorPin(d *libvirt.Domain, active bool, cur, spec *api.VMSpec) error {
	var from, to string
	if cur.CPU != nil {
		from = cur.CPU.EmulatorPinning
	}
	if spec.CPU != nil {
		to = spec.CPU.EmulatorPinning
	}
	if api.SameSet(from, to) {
		return nil
	}
	conn, err := d.DomainGetConnect()
	if err != nil {
		return wrap(err, "emulator pinning")
	}
	ni, err := conn.GetNodeInfo()
	if err != nil {
		return wrap(err, "node info")
	}
	hostCPUs := int(ni.Cpus)
	cpumap := make([]bool, hostCPUs)
	if to == "" {
		for i := range cpumap {
			cpumap[i] = true
		}
	} else {
		set, err := api.ParseCPUSet(to)
		if err != nil {
			return api.Errorf(api.CodeInvalid, "cpu.emulator_pinning: %s", err)
		}
		for _, c := range set {
			if c >= hostCPUs {
				return api.Errorf(api.CodeInvalid, "cpu.emulator_pinning %q names host CPU %d; this host has CPUs 0-%d", to, c, hostCPUs-1)
			}
			cpumap[c] = true
		}
	}
	// One flag per call: the test driver refuses LIVE and CONFIG together.
	if err := d.PinEmulator(cpumap, libvirt.DOMAIN_AFFECT_CONFIG); err != nil {
		return wrap(err, "pin emulator threads to %q", to)
	}
	if active {
		if err := d.PinEmulator(cpumap, libvirt.DOMAIN_AFFECT_LIVE); err != nil {
			return wrap(err, "pin emulator threads to %q", to)
		}
	}
	return nil
}
