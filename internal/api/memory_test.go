package api

import (
	"strings"
	"testing"
)

func TestCheckNUMA(t *testing.T) {
	cells := func(c ...NUMACell) []NUMACell { return c }
	for _, tc := range []struct {
		name       string
		cells      []NUMACell
		vcpu, mem  int64
		maxMem     int64
		wantErrSub string
	}{
		{"none", nil, 2, 128, 0, ""},
		{"two cells", cells(NUMACell{CPUs: "0", MemoryMiB: 64, HostNodes: "0"}, NUMACell{CPUs: "1", MemoryMiB: 64}), 2, 128, 0, ""},
		{"max equal", cells(NUMACell{CPUs: "0-3", MemoryMiB: 128}), 4, 128, 128, ""},
		{"spelling", cells(NUMACell{CPUs: "0,2", MemoryMiB: 64}, NUMACell{CPUs: "1,3", MemoryMiB: 64, HostNodes: "0-1"}), 4, 128, 0, ""},
		{"gap", cells(NUMACell{CPUs: "0", MemoryMiB: 128}), 2, 128, 0, "vCPU 1 is in no cell"},
		{"overlap", cells(NUMACell{CPUs: "0-1", MemoryMiB: 64}, NUMACell{CPUs: "1", MemoryMiB: 64}), 2, 128, 0, "both name vCPU 1"},
		{"beyond", cells(NUMACell{CPUs: "0-2", MemoryMiB: 128}), 2, 128, 0, "names vCPU 2, but the VM has 2 vCPUs"},
		{"memory sum", cells(NUMACell{CPUs: "0", MemoryMiB: 64}, NUMACell{CPUs: "1", MemoryMiB: 32}), 2, 128, 0, "96 MiB"},
		{"zero memory", cells(NUMACell{CPUs: "0", MemoryMiB: 0}), 1, 128, 0, "numa[0].memory_mib must be positive"},
		{"balloon", cells(NUMACell{CPUs: "0", MemoryMiB: 128}), 1, 128, 256, "max_memory_mib (256) must equal memory_mib"},
		{"bad cpus", cells(NUMACell{CPUs: "x", MemoryMiB: 128}), 1, 128, 0, "numa[0].cpus"},
		{"bad nodes", cells(NUMACell{CPUs: "0", MemoryMiB: 128, HostNodes: "a"}), 1, 128, 0, "numa[0].host_nodes"},
	} {
		err := CheckNUMA(tc.cells, tc.vcpu, tc.mem, tc.maxMem)
		switch {
		case tc.wantErrSub == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.wantErrSub != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErrSub)):
			t.Errorf("%s: error %v, want one with %q", tc.name, err, tc.wantErrSub)
		}
	}
}

func TestHugepageRules(t *testing.T) {
	spec := VMSpec{VCPU: 1, MemoryMiB: 128, MaxMemoryMiB: 256, Hugepages: true}
	if n := HugepagesNeeded(spec, 2048); n != 128 {
		t.Errorf("pages for 256 MiB of 2 MiB pages: %d", n)
	}
	if n := HugepagesNeeded(VMSpec{MemoryMiB: 128}, 2048); n != 0 {
		t.Errorf("a VM without hugepages needs %d", n)
	}
	if err := CheckHugepageSizes(spec, 2048); err != nil {
		t.Error(err)
	}
	if err := CheckHugepageSizes(spec, 1<<20); err == nil || !strings.Contains(err.Error(), "1048576 KiB") {
		t.Errorf("256 MiB on 1 GiB pages: %v", err)
	}
	odd := VMSpec{VCPU: 2, MemoryMiB: 130, Hugepages: true, NUMA: []NUMACell{{CPUs: "0", MemoryMiB: 65}, {CPUs: "1", MemoryMiB: 65}}}
	if err := ValidateVMSpec(&odd); err == nil || !strings.Contains(err.Error(), "numa[0].memory_mib (65)") {
		t.Errorf("odd cells: %v", err)
	}
	bad := VMSpec{VCPU: 1, MemoryMiB: 64, CPU: &CPU{EmulatorPinning: "a-"}}
	if err := ValidateVMSpec(&bad); err == nil || !strings.Contains(err.Error(), "cpu.emulator_pinning") {
		t.Errorf("bad emulator pinning: %v", err)
	}
}

// Emulator pinning is live; hugepages and numa are one restart each.
func TestMemoryLayoutRestarts(t *testing.T) {
	base := VMSpec{VCPU: 2, MemoryMiB: 128, MaxMemoryMiB: 128, CPU: &CPU{Pinning: []string{"0", "1"}, EmulatorPinning: "0"}}
	pin := base
	pin.CPU = &CPU{Pinning: []string{"0", "1"}, EmulatorPinning: "1"}
	if cs := NeedsRestart(base, pin); len(cs) > 0 {
		t.Errorf("emulator pinning needs a restart: %v", cs)
	}
	hp := base
	hp.Hugepages = true
	hp.NUMA = []NUMACell{{CPUs: "0", MemoryMiB: 64}, {CPUs: "1", MemoryMiB: 64}}
	if cs := NeedsRestart(base, hp); strings.Join(cs, ",") != "hugepages,numa" {
		t.Errorf("restart for %v, want hugepages and numa", cs)
	}
	if !SameSet("0,1", "0-1") || SameSet("0", "1") || !SameSet("", "") {
		t.Error("SameSet")
	}
}
