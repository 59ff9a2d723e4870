package api

import (
	"slices"
	"strings"
)

// HardwareChanges names the attributes (vcpu, max_memory_mib, cpu, disks,
// network_interfaces, cloud_init, guest_agent, firmware, secure_boot, tpm,
// graphics, rng, hugepages, numa, pci_devices) in which going from cur to want changes
// what the guest sees as hardware: a running VM takes those only with a
// restart. cur is the VM as it is; in want, an empty pool, bus, NIC model,
// disk cache or discard mode means the default, max_memory_mib 0 means memory_mib, and an interface
// without a MAC is a new one. The names are sorted.
func HardwareChanges(cur, want VMSpec) []string {
	var out []string
	maxMem := want.MaxMemoryMiB
	if maxMem == 0 {
		maxMem = want.MemoryMiB
	}
	if cur.VCPU != want.VCPU {
		out = append(out, "vcpu")
	}
	if cur.MaxMemoryMiB != maxMem {
		out = append(out, "max_memory_mib")
	}
	if !sameCPU(cur.CPU, want.CPU) {
		out = append(out, "cpu")
	}
	if !sameDisks(cur.Disks, want.Disks) {
		out = append(out, "disks")
	}
	if !sameInterfaces(cur.Interfaces, want.Interfaces) {
		out = append(out, "network_interfaces")
	}
	// The seed ISO is a device: adding or removing it needs a restart; new
	// content in an existing seed is read at the next boot.
	if (cur.CloudInit == nil) != (want.CloudInit == nil) {
		out = append(out, "cloud_init")
	}
	// The agent channel is a virtio-serial device: redefined and taken
	// at the next boot, like the other devices.
	if cur.GuestAgentEnabled() != want.GuestAgentEnabled() {
		out = append(out, "guest_agent")
	}
	// Firmware, TPM, consoles, the RNG, memory backing, NUMA and
	// passthrough are fixed when QEMU starts: each is one restart.
	if orDefault(cur.Firmware, FirmwareBIOS) != orDefault(want.Firmware, FirmwareBIOS) {
		out = append(out, "firmware")
	}
	if cur.SecureBoot != want.SecureBoot {
		out = append(out, "secure_boot")
	}
	if (cur.TPM == nil) != (want.TPM == nil) || (cur.TPM != nil && cur.TPM.Version != want.TPM.Version) {
		out = append(out, "tpm")
	}
	if !sameGraphics(cur.Graphics, want.Graphics) {
		out = append(out, "graphics")
	}
	if cur.RNGEnabled() != want.RNGEnabled() {
		out = append(out, "rng")
	}
	if cur.Hugepages != want.Hugepages {
		out = append(out, "hugepages")
	}
	if !slices.Equal(cur.NUMA, want.NUMA) {
		out = append(out, "numa")
	}
	if !slices.Equal(cur.PCIDevices, want.PCIDevices) {
		out = append(out, "pci_devices")
	}
	slices.Sort(out)
	return out
}

// NICsOnlyAppended reports whether want differs from cur only by network
// interfaces added after the existing ones: those are hot-added to a
// running VM.
func NICsOnlyAppended(cur, want VMSpec) bool {
	if len(want.Interfaces) <= len(cur.Interfaces) {
		return false
	}
	prefix := want
	prefix.Interfaces = want.Interfaces[:len(cur.Interfaces)]
	return len(HardwareChanges(cur, prefix)) == 0
}

// NeedsRestart names the changes from cur to want that a running VM takes
// only with a restart (HardwareChanges), or nil when everything applies
// live, including interfaces only appended.
func NeedsRestart(cur, want VMSpec) []string {
	if NICsOnlyAppended(cur, want) {
		return nil
	}
	return HardwareChanges(cur, want)
}

func sameCPU(a, b *CPU) bool {
	var x, y CPU
	if a != nil {
		x = *a
	}
	if b != nil {
		y = *b
	}
	return x.Mode == y.Mode && x.Sockets == y.Sockets && x.Cores == y.Cores && x.Threads == y.Threads &&
		slices.Equal(x.Pinning, y.Pinning)
}

// DefaultGraphicsListen is where a console listens unless told: only
// the host itself (reach it through an SSH tunnel).
const DefaultGraphicsListen = "127.0.0.1"

// DefaultDiskCache is the cache mode of a disk that names none.
const DefaultDiskCache = "none"

// sameGraphics compares type and listen address; the write-only password
// is not read back, so it cannot be compared here.
func sameGraphics(a, b *Graphics) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Type == b.Type && orDefault(a.Listen, DefaultGraphicsListen) == orDefault(b.Listen, DefaultGraphicsListen)
}

func sameDisks(cur, want []VMDisk) bool {
	if len(cur) != len(want) {
		return false
	}
	for i, b := range want {
		a := cur[i]
		if a.Pool != orDefault(b.Pool, DefaultPool) || a.Volume != b.Volume || a.Bus != orDefault(b.Bus, DefaultBus) ||
			orDefault(a.Cache, DefaultDiskCache) != orDefault(b.Cache, DefaultDiskCache) || a.IO != b.IO ||
			orDefault(a.Discard, DefaultDiskDiscard) != orDefault(b.Discard, DefaultDiskDiscard) {
			return false
		}
	}
	return true
}

func sameInterfaces(cur, want []VMInterface) bool {
	if len(cur) != len(want) {
		return false
	}
	for i, b := range want {
		a := cur[i]
		if b.MAC == "" || !strings.EqualFold(a.MAC, b.MAC) || a.Network != b.Network || a.Bridge != b.Bridge ||
			a.Model != orDefault(b.Model, DefaultNICModel) || a.VLAN != b.VLAN || max(a.Queues, 1) != max(b.Queues, 1) {
			return false
		}
	}
	return true
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
