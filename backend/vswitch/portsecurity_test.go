package vswitch

import (
	"slices"
	"strings"
	"testing"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// psBridge builds a bridge state with the given ports, as the cache would
// hold it: the bridge's own port, a DHCP port, a tunnel and VM ports.
func psBridge(portSecurity string, vmPorts ...*portState) *bridgeState {
	ext := map[string]string{keyOwned: "true", keyNetwork: "lan"}
	if portSecurity != "" {
		ext[keyPortSecurity] = portSecurity
	}
	one := 1
	st := &bridgeState{br: Bridge{Name: "kvm-lan", ExternalIDs: ext}}
	st.ports = append(st.ports,
		&portState{port: Port{Name: "kvm-lan"}, ifaces: []Interface{{Name: "kvm-lan", Type: "internal", Ofport: &one}}},
		&portState{port: Port{Name: "kd-lan", ExternalIDs: map[string]string{keyOwned: "true", keyRole: roleDHCP}},
			ifaces: []Interface{{Name: "kd-lan", Type: "internal", Ofport: intPtr(2)}}},
		&portState{port: Port{Name: "kt-lan-b", ExternalIDs: map[string]string{keyOwned: "true", keyPeer: "b"}},
			ifaces: []Interface{{Name: "kt-lan-b", Type: "vxlan", Ofport: intPtr(3)}}},
		// a test probe or another tool's port: no VM markers
		&portState{port: Port{Name: "probe0"}, ifaces: []Interface{{Name: "probe0", Type: "internal", Ofport: intPtr(4)}}},
	)
	st.ports = append(st.ports, vmPorts...)
	return st
}

// libvirtPort is a vnetN tap as libvirt plugs it: the markers are on the
// interface only.
func libvirtPort(name, mac string, ofport int) *portState {
	var op *int
	if ofport != 0 {
		op = &ofport
	}
	return &portState{port: Port{Name: name}, ifaces: []Interface{{Name: name, Ofport: op,
		ExternalIDs: map[string]string{keyMAC: mac, keyIfaceID: "x", keyVM: "0b7c5c1e-0000-4000-8000-000000000001"}}}}
}

// ownPort is a port kvm-hostd records itself (test driver).
func ownPort(name, mac string, ofport int) *portState {
	ext := map[string]string{keyOwned: "true", keyNetwork: "lan", keyVM: "web", keyMAC: mac}
	return &portState{port: Port{Name: name, ExternalIDs: ext},
		ifaces: []Interface{{Name: name, Type: "internal", Ofport: intPtr(int64(ofport)), ExternalIDs: ext}}}
}

func flowLines(fs []ofFlow) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = f.key()
	}
	return out
}

func hasFlow(fs []ofFlow, prio int, actions string, match ...string) bool {
	want := ofFlow{priority: prio, match: match, actions: actions}.key()
	return slices.Contains(flowLines(fs), want)
}

func TestPortSecurityStaticAddress(t *testing.T) {
	st := psBridge("true", libvirtPort("vnet0", "52:54:00:AA:00:01", 7))
	fs, pending := desiredPortSecurity(st, map[string]string{"52:54:00:aa:00:01": "10.0.0.5"})
	if pending {
		t.Fatal("pending with every port numbered")
	}
	const in, src = "in_port=7", "dl_src=52:54:00:aa:00:01"
	for _, c := range []struct {
		prio    int
		actions string
		match   []string
	}{
		{prioPortDrop, "drop", []string{in}},
		{prioDHCPServerDrop, "drop", []string{"udp", in, "tp_src=67"}},
		{prioDHCPClient, "NORMAL", []string{"udp", in, src, "nw_src=0.0.0.0", "tp_src=68", "tp_dst=67"}},
		{prioAllow, "NORMAL", []string{"arp", in, src, "arp_sha=52:54:00:aa:00:01", "arp_spa=10.0.0.5"}},
		{prioAllow, "NORMAL", []string{"arp", in, src, "arp_sha=52:54:00:aa:00:01", "arp_spa=0.0.0.0"}},
		{prioAllow, "NORMAL", []string{"ip", in, src, "nw_src=10.0.0.5"}},
		{prioAllow, "NORMAL", []string{"ipv6", in, src}},
		{prioAllow, "NORMAL", []string{"rarp", in, src}},
	} {
		if !hasFlow(fs, c.prio, c.actions, c.match...) {
			t.Errorf("missing priority=%d %v actions=%s in\n%s", c.prio, c.match, c.actions, strings.Join(flowLines(fs), "\n"))
		}
	}
	if len(fs) != 8 {
		t.Fatalf("%d flows, want 8:\n%s", len(fs), strings.Join(flowLines(fs), "\n"))
	}
	// Nothing for the bridge's own port, the DHCP port, tunnels or probes.
	for _, f := range fs {
		if !slices.Contains(f.match, in) {
			t.Fatalf("flow for another port: %s", f.key())
		}
	}
}

func TestPortSecurityUnknownAddressChecksMACOnly(t *testing.T) {
	st := psBridge("", ownPort("vm-1", "52:54:00:aa:00:02", 9)) // no key: default on
	fs, _ := desiredPortSecurity(st, map[string]string{"52:54:00:aa:00:99": "10.0.0.9"})
	const in, src = "in_port=9", "dl_src=52:54:00:aa:00:02"
	if !hasFlow(fs, prioAllow, "NORMAL", "ip", in, src) || !hasFlow(fs, prioAllow, "NORMAL", "arp", in, src, "arp_sha=52:54:00:aa:00:02") {
		t.Fatalf("MAC-only rules missing:\n%s", strings.Join(flowLines(fs), "\n"))
	}
	if !hasFlow(fs, prioDHCPServerDrop, "drop", "udp", in, "tp_src=67") || !hasFlow(fs, prioPortDrop, "drop", in) {
		t.Fatal("DHCP server drop or default drop missing")
	}
	for _, f := range fs {
		for _, m := range f.match {
			if strings.HasPrefix(m, "nw_src=10.") || strings.HasPrefix(m, "arp_spa=") {
				t.Fatalf("address rule without a known address: %s", f.key())
			}
		}
	}
}

func TestPortSecurityOffMeansNoFlows(t *testing.T) {
	st := psBridge("false", libvirtPort("vnet0", "52:54:00:aa:00:01", 7))
	if fs, pending := desiredPortSecurity(st, nil); len(fs) != 0 || pending {
		t.Fatalf("flows %v pending %v with port_security=false", fs, pending)
	}
}

func TestPortSecuritySeveralPortsAndRemoval(t *testing.T) {
	known := map[string]string{"52:54:00:aa:00:01": "10.0.0.5", "52:54:00:AA:00:02": "10.0.0.6"}
	a, b := libvirtPort("vnet0", "52:54:00:aa:00:01", 7), ownPort("vm-2", "52:54:00:aa:00:02", 8)
	both, _ := desiredPortSecurity(psBridge("true", a, b), known)
	if len(both) != 16 {
		t.Fatalf("%d flows for two ports", len(both))
	}
	// MAC keys of known match whatever their case.
	if !hasFlow(both, prioAllow, "NORMAL", "ip", "in_port=8", "dl_src=52:54:00:aa:00:02", "nw_src=10.0.0.6") {
		t.Fatal("upper-case MAC key not matched")
	}
	onlyB, _ := desiredPortSecurity(psBridge("true", b), known)
	for _, f := range onlyB {
		if slices.Contains(f.match, "in_port=7") {
			t.Fatalf("removed port keeps flow %s", f.key())
		}
	}
	if len(onlyB) != 8 {
		t.Fatalf("%d flows after removal", len(onlyB))
	}
}

func TestPortSecurityPendingAndInvalidInput(t *testing.T) {
	st := psBridge("true",
		libvirtPort("vnet0", "52:54:00:aa:00:01", 0),  // no ofport yet
		libvirtPort("vnet1", "52:54:00:aa:00:03", -1), // failed
		libvirtPort("vnet2", "not-a-mac,actions=NORMAL", 11),
		libvirtPort("vnet3", "52:54:00:aa:00:04", 12),
	)
	fs, pending := desiredPortSecurity(st, map[string]string{
		"52:54:00:aa:00:04": "10.0.0.7\nadd priority=999,actions=NORMAL", // never reaches a flow
		"garbage":           "10.0.0.8",
	})
	if !pending {
		t.Fatal("a port without ofport must be retried")
	}
	for _, f := range fs {
		if slices.Contains(f.match, "in_port=0") || slices.Contains(f.match, "in_port=-1") {
			t.Fatalf("flow for an unnumbered port: %s", f.key())
		}
		if strings.ContainsAny(f.addLine(), "\n") || strings.Contains(f.addLine(), "999") || strings.Contains(f.addLine(), "not-a-mac") {
			t.Fatalf("unvalidated input in %q", f.addLine())
		}
	}
	// A port whose MAC is not valid may send nothing at all.
	var port11 []ofFlow
	for _, f := range fs {
		if slices.Contains(f.match, "in_port=11") && f.actions != "drop" {
			port11 = append(port11, f)
		}
	}
	if len(port11) != 0 {
		t.Fatalf("invalid-MAC port has allow rules: %v", flowLines(port11))
	}
	// The invalid address leaves port 12 MAC-checked only.
	if !hasFlow(fs, prioAllow, "NORMAL", "ip", "in_port=12", "dl_src=52:54:00:aa:00:04") {
		t.Fatalf("flows:\n%s", strings.Join(flowLines(fs), "\n"))
	}
}

func TestParseDumpedFlowMatchesDesired(t *testing.T) {
	// As ovs-ofctl 3.1 prints them (fields reordered against ours).
	dump := ` cookie=0x6b766d2d70736563, priority=100,arp,in_port=7,dl_src=52:54:00:aa:00:01,arp_spa=10.0.0.5,arp_sha=52:54:00:aa:00:01 actions=NORMAL
 cookie=0x6b766d2d70736563, priority=10,in_port=7 actions=drop
`
	want := []ofFlow{
		{priority: prioAllow, match: []string{"arp", "in_port=7", "dl_src=52:54:00:aa:00:01", "arp_sha=52:54:00:aa:00:01", "arp_spa=10.0.0.5"}, actions: "NORMAL"},
		{priority: prioPortDrop, match: []string{"in_port=7"}, actions: "drop"},
	}
	var got []string
	for _, l := range strings.Split(dump, "\n") {
		if f, ok := parseDumpedFlow(l); ok {
			got = append(got, f.key())
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, flowKeys(want)) {
		t.Fatalf("got %v\nwant %v", got, flowKeys(want))
	}
	if l := want[1].addLine(); l != "add cookie=0x6b766d2d70736563,table=0,priority=10,in_port=7,actions=drop" {
		t.Fatalf("add line %q", l)
	}
}

func TestOpenFlowTarget(t *testing.T) {
	s := &OVS{rundir: "/tmp/ovs-a"}
	if got := s.ofTarget("kvm-lan"); got != "unix:/tmp/ovs-a/kvm-lan.mgmt" {
		t.Fatal(got)
	}
	if got := (&OVS{}).ofTarget("kvm-lan"); got != "kvm-lan" {
		t.Fatal(got)
	}
}

// The embedded OVSDB has no switch: the setting is stored and read back,
// and syncing applies nothing and reports nothing pending.
func TestEmbeddedPortSecuritySetting(t *testing.T) {
	s := openEmbedded(t)
	ctx := tctx(t)
	n, err := s.EnsureNetwork(ctx, "lan", api.NetworkSpec{}, "")
	if err != nil {
		t.Fatal(err)
	}
	if !n.PortSecurity {
		t.Fatal("port_security defaults to true")
	}
	off := false
	if n, err = s.EnsureNetwork(ctx, "lan", api.NetworkSpec{PortSecurity: &off}, ""); err != nil || n.PortSecurity {
		t.Fatalf("%+v %v", n, err)
	}
	if err := s.AttachVMPorts(ctx, "web-1", []api.VMInterface{{Network: "lan", MAC: "52:54:00:00:00:01"}}); err != nil {
		t.Fatal(err)
	}
	pending, changed, err := s.SyncPortSecurity(ctx, "lan", nil)
	if err != nil || pending || changed {
		t.Fatalf("pending %v changed %v err %v", pending, changed, err)
	}
	if _, _, err := s.SyncPortSecurity(ctx, "nope", nil); !api.IsNotFound(err) {
		t.Fatalf("missing network: %v", err)
	}
	if _, _, err := s.SyncPortSecurity(ctx, "../x", nil); err == nil {
		t.Fatal("invalid name accepted")
	}
}
