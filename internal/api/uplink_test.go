package api

import (
	"strings"
	"testing"
)

func TestValidateUplinkName(t *testing.T) {
	for _, ok := range []string{"eth1", "up0", "bond0.10", "ens3f1", "enp1s0", "kvmtup0", "lo0x", "br-ext", "vlan100", "vmbr0"} {
		if err := ValidateUplinkName(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for name, want := range map[string]string{
		"":                   "not valid",
		"eth1/2":             "not valid",
		"a-very-long-ifname": "not valid",
		"lo":                 "loopback",
		"kvm-lan":            "kvm-hostd's network bridges",
		"kvu-eth1":           "kvm-hostd's uplink bridges",
		"kpn-0123456789a":    "uplink patch ports",
		"kpu-0123456789a":    "uplink patch ports",
		"kt-0123456789ab":    "tunnel ports",
		"kd-0123456789ab":    "DHCP ports",
		"vnet3":              "libvirt's VM tap devices",
		"macvtap0":           "libvirt's macvtap",
		"virbr0":             "libvirt's network bridges",
		"ovs-system":         "kernel datapath",
		"ovs-netdev":         "userspace datapath",
		"genev_sys_6081":     "tunnel devices",
		"vxlan_sys_4789":     "tunnel devices",
		"gre_sys":            "tunnel devices",
		"stt_sys_7471":       "tunnel devices",
	} {
		err := ValidateUplinkName(name)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error containing %q", name, err, want)
		}
	}
	// The names the project derives for itself are all refused.
	bs, us := UplinkPatchNames("lan")
	for _, own := range []string{BridgeName("lan"), BridgeName(strings.Repeat("x", 40)), UplinkBridgeName("eth1"),
		bs, us, TunnelPortName("lan", "host-b"), DHCPPortName("lan")} {
		if ValidateUplinkName(own) == nil {
			t.Errorf("%s, a name kvm-hostd creates, is accepted as an uplink", own)
		}
	}
	// And through the network spec, as kvm-hostd and the provider see it.
	if err := ValidateNetworkSpec("n", NetworkSpec{Uplink: "vnet3"}); !IsCode(err, CodeInvalid) || !strings.Contains(err.Error(), "uplink") {
		t.Errorf("spec with uplink vnet3: %v", err)
	}
}
