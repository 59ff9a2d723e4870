package hypervisor

import (
	"reflect"
	"strings"
	"testing"

	"libvirt.org/go/libvirtxml"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// The memory layout in XML both ways: hugepages, NUMA cells with strict
// host-node binding, emulator pinning; read back in the request's spelling
// even where libvirt re-spells the sets.
func TestDomainMemoryLayoutXML(t *testing.T) {
	spec := api.VMSpec{VCPU: 4, MemoryMiB: 1024, Hugepages: true,
		NUMA: []api.NUMACell{{CPUs: "0,1", MemoryMiB: 512, HostNodes: "0"}, {CPUs: "2-3", MemoryMiB: 512}},
		CPU:  &api.CPU{Pinning: []string{"0", "1", "2", "3"}, EmulatorPinning: "4,5"}}
	x := builtDomain(t, spec, domainParams{name: "db", virtType: "qemu", meta: &instanceMeta{}, probe: probeNoKVM})
	doc, err := x.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"<memoryBacking>", "<hugepages></hugepages>",
		`<cell id="0" cpus="0,1" memory="512" unit="MiB">`, `<cell id="1" cpus="2-3" memory="512" unit="MiB">`,
		`<memnode cellid="0" mode="strict" nodeset="0">`, `<emulatorpin cpuset="4,5">`,
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("domain XML lacks %s:\n%s", want, doc)
		}
	}
	if strings.Contains(doc, `cellid="1"`) {
		t.Errorf("cell 1 has no host_nodes but is bound:\n%s", doc)
	}

	// libvirt stores "0,1" as "0-1" and "4,5" as "4-5".
	x.CPU.Numa.Cell[0].CPUs = "0-1"
	x.CPUTune.EmulatorPin.CPUSet = "4-5"
	got, _ := specOf(x, nil)
	if !got.Hugepages || !reflect.DeepEqual(got.NUMA, spec.NUMA) || got.CPU == nil || got.CPU.EmulatorPinning != "4,5" {
		t.Errorf("read back hugepages %v numa %+v cpu %+v; want %+v", got.Hugepages, got.NUMA, got.CPU, spec)
	}
	if cs := api.HardwareChanges(got, spec); len(cs) > 0 {
		t.Errorf("read-back differs from the request in %v", cs)
	}

	// Changed outside: libvirt's value wins.
	x.CPUTune.EmulatorPin.CPUSet = "6"
	x.CPU.Numa.Cell[1].CPUs = "2"
	got, _ = specOf(x, nil)
	if got.CPU.EmulatorPinning != "6" || got.NUMA[1].CPUs != "2" {
		t.Errorf("changes made outside not read: %+v %+v", got.CPU, got.NUMA)
	}
}

// A domain without any of it reads back with none, and an emulator
// pinning alone makes a cpu block.
func TestDomainMemoryLayoutAbsent(t *testing.T) {
	x := builtDomain(t, api.VMSpec{VCPU: 1, MemoryMiB: 64}, domainParams{name: "vm", virtType: "test", meta: &instanceMeta{}})
	if x.MemoryBacking != nil || x.NUMATune != nil || (x.CPU != nil && x.CPU.Numa != nil) || (x.CPUTune != nil && x.CPUTune.EmulatorPin != nil) {
		t.Fatalf("plain VM has a memory layout: %+v %+v %+v %+v", x.MemoryBacking, x.NUMATune, x.CPU, x.CPUTune)
	}
	got, _ := specOf(x, nil)
	if got.Hugepages || got.NUMA != nil || got.CPU != nil {
		t.Errorf("read back %+v %+v %+v", got.Hugepages, got.NUMA, got.CPU)
	}
	x = builtDomain(t, api.VMSpec{VCPU: 1, MemoryMiB: 64, CPU: &api.CPU{EmulatorPinning: "0"}},
		domainParams{name: "vm", virtType: "test", meta: &instanceMeta{}})
	if got, _ := specOf(x, nil); got.CPU == nil || got.CPU.EmulatorPinning != "0" {
		t.Errorf("emulator pinning alone read back as %+v", got.CPU)
	}
}

// A restart keeps the memory layout: mergeDomain carries it over.
func TestMergeDomainMemoryLayout(t *testing.T) {
	cur := &libvirtxml.Domain{Devices: &libvirtxml.DomainDeviceList{}}
	want := builtDomain(t, api.VMSpec{VCPU: 2, MemoryMiB: 128, Hugepages: true,
		NUMA: []api.NUMACell{{CPUs: "0", MemoryMiB: 64, HostNodes: "0"}, {CPUs: "1", MemoryMiB: 64, HostNodes: "0"}}},
		domainParams{name: "vm", virtType: "test", meta: &instanceMeta{}})
	n := mergeDomain(cur, want)
	if n.MemoryBacking == nil || n.NUMATune == nil || len(n.NUMATune.MemNodes) != 2 || n.CPU == nil || n.CPU.Numa == nil {
		t.Errorf("merged domain lost the memory layout: %+v %+v %+v", n.MemoryBacking, n.NUMATune, n.CPU)
	}
}
