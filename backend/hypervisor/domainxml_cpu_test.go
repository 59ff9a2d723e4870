package hypervisor

import (
	"slices"
	"strings"
	"testing"

	"libvirt.org/go/libvirtxml"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Probe results as the three kinds of host, and a healthy KVM host, give
// them (see TestProbeHostKinds for how each is reached).
var (
	probeNoKVM = &HostProbe{DomainType: "qemu", CPUMode: CPUModeQEMU64, Reason: "no /dev/kvm; TCG ran the probe guest in 660ms: using TCG",
		Attempts: []ProbeAttempt{{DomainType: "qemu", CPUMode: CPUModeQEMU64, Ran: true, Started: true}}}
	// MSR-crashing, KVM fast enough: host-passthrough runs without arch-capabilities.
	probeMSRFast = &HostProbe{DomainType: "kvm", CPUMode: "host-passthrough", Disable: []string{"arch-capabilities"},
		Reason: "kvm with host-passthrough crashes QEMU (failed to set MSR 0x10a to 0x69); with arch-capabilities disabled it runs; using KVM",
		Attempts: []ProbeAttempt{
			{DomainType: "qemu", CPUMode: CPUModeQEMU64, Ran: true, Started: true},
			{DomainType: "kvm", CPUMode: "host-passthrough", Err: "failed to set MSR 0x10a to 0x69"},
			{DomainType: "kvm", CPUMode: "host-passthrough", Disable: []string{"arch-capabilities"}, Ran: true, Started: true},
		}}
	// MSR-crashing, KVM slower than TCG.
	probeMSRSlow = &HostProbe{DomainType: "qemu", CPUMode: CPUModeQEMU64,
		Reason: "kvm with host-passthrough crashes QEMU (failed to set MSR 0x10a to 0x69); with arch-capabilities disabled it runs; " +
			"KVM (host-passthrough) ran the probe guest in 3.3s, slower than TCG in 660ms: using TCG",
		Attempts: []ProbeAttempt{
			{DomainType: "qemu", CPUMode: CPUModeQEMU64, Ran: true, Started: true},
			{DomainType: "kvm", CPUMode: "host-passthrough", Err: "failed to set MSR 0x10a to 0x69"},
			{DomainType: "kvm", CPUMode: "host-passthrough", Disable: []string{"arch-capabilities"}, Ran: true, Started: true},
		}}
	probeHealthy = &HostProbe{DomainType: "kvm", CPUMode: "host-passthrough", Reason: "using KVM",
		Attempts: []ProbeAttempt{{DomainType: "kvm", CPUMode: "host-passthrough", Ran: true, Started: true}}}
)

// builtDomain builds spec's domain and reads it back from its XML: what
// libvirt gets is what counts.
func builtDomain(t *testing.T, spec api.VMSpec, p domainParams) *libvirtxml.Domain {
	t.Helper()
	x, err := buildDomain(&spec, p)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := x.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var back libvirtxml.Domain
	if err := back.Unmarshal(doc); err != nil {
		t.Fatal(err)
	}
	return &back
}

func cpuOfBuilt(t *testing.T, spec api.VMSpec, virtType string, p *HostProbe) (*libvirtxml.Domain, string, []string) {
	t.Helper()
	back := *builtDomain(t, spec, domainParams{name: "vm", virtType: virtType, meta: &instanceMeta{}, probe: p})
	if back.CPU == nil || back.CPU.Mode == "" {
		return &back, CPUModeQEMU64, nil
	}
	var off []string
	for _, f := range back.CPU.Features {
		if f.Policy == "disable" {
			off = append(off, f.Name)
		}
	}
	return &back, back.CPU.Mode, off
}

func TestBuildDomainCPUFromProbe(t *testing.T) {
	cases := []struct {
		name     string
		probe    *HostProbe
		virtType string
		mode     string // asked for; "" = none
		want     string
		disable  []string
	}{
		{"(a) default", probeNoKVM, "qemu", "", CPUModeQEMU64, nil},
		{"(a) host-passthrough on TCG", probeNoKVM, "qemu", "host-passthrough", "maximum", nil},
		{"(c) default, KVM fast", probeMSRFast, "kvm", "", "host-passthrough", []string{"arch-capabilities"}},
		{"(c) explicit host-passthrough gets the probed fix", probeMSRFast, "kvm", "host-passthrough", "host-passthrough", []string{"arch-capabilities"}},
		{"(c) explicit host-model is not fixed on a guess", probeMSRFast, "kvm", "host-model", "host-model", nil},
		{"(c) explicit maximum", probeMSRFast, "kvm", "maximum", "maximum", nil},
		{"(c) default, KVM slow", probeMSRSlow, "qemu", "", CPUModeQEMU64, nil},
		{"(c) explicit host-passthrough, KVM slow", probeMSRSlow, "qemu", "host-passthrough", "maximum", nil},
		// A kvm domain defined before the probe chose TCG keeps kvm; the
		// probe still knows what host-passthrough needs under kvm.
		{"(c) older kvm domain, KVM slow", probeMSRSlow, "kvm", "", "host-passthrough", []string{"arch-capabilities"}},
		{"healthy default", probeHealthy, "kvm", "", "host-passthrough", nil},
		{"no probe, kvm", nil, "kvm", "", "host-passthrough", nil},
		{"test driver", &HostProbe{DomainType: "test"}, "test", "", CPUModeQEMU64, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			spec := api.VMSpec{VCPU: 2, MemoryMiB: 64}
			if c.mode != "" {
				spec.CPU = &api.CPU{Mode: c.mode}
			}
			x, mode, off := cpuOfBuilt(t, spec, c.virtType, c.probe)
			if mode != c.want || !slices.Equal(off, c.disable) {
				t.Errorf("cpu mode %s disable %v, want %s disable %v", mode, off, c.want, c.disable)
			}
			// Read back, the mode the user did not set stays unset, so a
			// plan after apply shows no drift.
			got, _ := specOf(x, nil)
			if got.CPU != nil && got.CPU.Mode != c.mode {
				t.Errorf("read back cpu.mode %q, want %q", got.CPU.Mode, c.mode)
			}
			if c.mode == "" && got.CPU != nil {
				t.Errorf("read back a cpu block the user did not set: %+v", got.CPU)
			}
			if len(api.HardwareChanges(got, spec)) > 0 {
				t.Errorf("the domain as built differs from its own spec: %+v vs %+v", got, spec)
			}
		})
	}
}

// On an MSR-crashing host a start failure names what the probe found.
func TestStartFailureNamesProbe(t *testing.T) {
	spec := api.VMSpec{VCPU: 1, MemoryMiB: 64, CPU: &api.CPU{Mode: "host-model"}}
	x, _, _ := cpuOfBuilt(t, spec, "kvm", probeMSRFast)
	note := probeNote(x, probeMSRFast)
	for _, want := range []string{
		"domain type kvm with cpu mode host-model failed to start on this host",
		"the host probe found: kvm with host-passthrough crashes QEMU (failed to set MSR 0x10a to 0x69)",
		"the default here is kvm with cpu mode host-passthrough (arch-capabilities disabled)",
	} {
		if !strings.Contains(note, want) {
			t.Errorf("%q\ndoes not say %q", note, want)
		}
	}
	x, _, _ = cpuOfBuilt(t, api.VMSpec{VCPU: 1, MemoryMiB: 64, CPU: &api.CPU{Mode: "host-passthrough"}}, "qemu", probeMSRSlow)
	if note := probeNote(x, probeMSRSlow); !strings.Contains(note, "domain type qemu with cpu mode maximum, asked for as host-passthrough") ||
		!strings.Contains(note, "slower than TCG") || !strings.Contains(note, "default here is qemu with cpu mode qemu64") {
		t.Errorf("note: %s", note)
	}
}

// TestBuildDomainNICFromNetwork: a NIC carries its network's MTU, and on a
// userspace-datapath bridge a virtio NIC offers the guest no checksum
// offload (OVS's netdev datapath forwards partially checksummed frames as
// they are, and TCP between VMs fails).
func TestBuildDomainNICFromNetwork(t *testing.T) {
	spec := api.VMSpec{VCPU: 1, MemoryMiB: 64, Interfaces: []api.VMInterface{
		{Network: "overlay", Bridge: "kvbr-a", MTU: 1450, NoChecksumOffload: true},
		{Network: "kernel", Bridge: "kvbr-b"},
		{Network: "e1000", Bridge: "kvbr-c", Model: "e1000", NoChecksumOffload: true},
	}}
	ifs := builtDomain(t, spec, domainParams{name: "vm", virtType: "qemu", meta: &instanceMeta{}}).Devices.Interfaces
	if len(ifs) != 3 {
		t.Fatalf("%d interfaces", len(ifs))
	}
	if ifs[0].MTU == nil || ifs[0].MTU.Size != 1450 || ifs[0].Driver == nil || ifs[0].Driver.Host == nil || ifs[0].Driver.Host.CSum != "off" {
		t.Errorf("overlay NIC: mtu %+v driver %+v, want 1450 and host csum off", ifs[0].MTU, ifs[0].Driver)
	}
	if ifs[1].MTU != nil || ifs[1].Driver != nil {
		t.Errorf("kernel-datapath NIC: mtu %+v driver %+v, want neither", ifs[1].MTU, ifs[1].Driver)
	}
	if ifs[2].Driver != nil {
		t.Errorf("e1000 NIC got a virtio driver setting: %+v", ifs[2].Driver)
	}
}
