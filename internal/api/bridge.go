package api

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
)

// maxIfName is IFNAMSIZ-1: an OVS bridge is also a kernel/netdev interface.
const maxIfName = 15

var plainIfName = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// BridgeName is the OVS bridge that realizes network name on every host:
// "kvm-<name>" when that fits an interface name, else "kvm-" plus a stable
// hash of the name, so every host derives the same bridge independently.
func BridgeName(network string) string {
	if b := "kvm-" + network; len(b) <= maxIfName && plainIfName.MatchString(network) {
		return b
	}
	sum := sha256.Sum256([]byte(network))
	return "kvm-" + hex.EncodeToString(sum[:])[:maxIfName-4]
}

// TunnelPortName is the OVS port of the tunnel from a network's bridge to
// one peer host; stable for a (network, peer) pair and within IFNAMSIZ.
func TunnelPortName(network, peerHost string) string {
	sum := sha256.Sum256([]byte(network + "\x00" + peerHost))
	return "kt-" + hex.EncodeToString(sum[:])[:maxIfName-3]
}

// DHCPPortName is the OVS internal port a host's DHCP server for network
// listens on; stable for the network and within IFNAMSIZ.
func DHCPPortName(network string) string {
	sum := sha256.Sum256([]byte("dhcp\x00" + network))
	return "kd-" + hex.EncodeToString(sum[:])[:maxIfName-3]
}

// UplinkBridgeName is the OVS bridge that holds host interface iface as
// its uplink, shared by every network using that interface: "kvu-<iface>"
// when that fits an interface name, else "kvu-" plus a hash.
func UplinkBridgeName(iface string) string {
	if b := "kvu-" + iface; len(b) <= maxIfName && plainIfName.MatchString(iface) {
		return b
	}
	sum := sha256.Sum256([]byte(iface))
	return "kvu-" + hex.EncodeToString(sum[:])[:maxIfName-4]
}

// UplinkPatchNames are the two ends of the OVS patch-port pair joining
// network's bridge (bridgeSide) to its uplink bridge (uplinkSide).
func UplinkPatchNames(network string) (bridgeSide, uplinkSide string) {
	sum := sha256.Sum256([]byte("uplink\x00" + network))
	h := hex.EncodeToString(sum[:])[:maxIfName-4]
	return "kpn-" + h, "kpu-" + h
}

var ifNamePattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`)

// ValidateInterfaceName checks a host network interface name the way the
// kernel does (at most 15 bytes, no '/', ':' or whitespace), restricted to
// the characters interface names use in practice.
func ValidateInterfaceName(name string) error {
	if name == "" || len(name) > maxIfName || !ifNamePattern.MatchString(name) {
		return fmt.Errorf("interface name %q is not valid: 1 to %d letters, digits, '_', '-' or '.' (such as eth1 or bond0.10)", name, maxIfName)
	}
	return nil
}

// reservedIfPrefixes are the prefixes of interface names that kvm-hostd,
// libvirt and Open vSwitch create for themselves. Such an interface is
// never the operator's to hand over as an uplink: taking one would splice
// a network into another network's bridge, a VM's tap, or the datapath.
var reservedIfPrefixes = []struct{ prefix, owner string }{
	{"kvm-", "kvm-hostd's network bridges"},
	{"kvu-", "kvm-hostd's uplink bridges"},
	{"kpn-", "kvm-hostd's uplink patch ports"},
	{"kpu-", "kvm-hostd's uplink patch ports"},
	{"kt-", "kvm-hostd's tunnel ports"},
	{"kd-", "kvm-hostd's DHCP ports"},
	{"vnet", "libvirt's VM tap devices"},
	{"macvtap", "libvirt's macvtap devices"},
	{"virbr", "libvirt's network bridges"},
	{"ovs-system", "Open vSwitch's kernel datapath"},
	{"ovs-netdev", "Open vSwitch's userspace datapath"},
	{"genev_sys_", "Open vSwitch's tunnel devices"},
	{"vxlan_sys_", "Open vSwitch's tunnel devices"},
	{"gre_sys", "Open vSwitch's tunnel devices"},
	{"stt_sys_", "Open vSwitch's tunnel devices"},
}

// ValidateUplinkName checks a network's uplink interface name: a valid
// interface name that is neither the loopback interface nor one of the
// interfaces kvm-hostd, libvirt or Open vSwitch manage (see
// reservedIfPrefixes). Both the provider (at plan time) and kvm-hostd
// apply it; kvm-hostd then also checks the interface itself (that it
// exists, is not a loopback device and holds none of the host's
// addresses), which only the host can know.
func ValidateUplinkName(name string) error {
	if err := ValidateInterfaceName(name); err != nil {
		return err
	}
	if name == "lo" {
		return fmt.Errorf("interface %q is the loopback interface, which cannot be an uplink", name)
	}
	for _, r := range reservedIfPrefixes {
		if strings.HasPrefix(name, r.prefix) {
			return fmt.Errorf("interface %q is reserved: names starting with %q are %s, which cannot be an uplink", name, r.prefix, r.owner)
		}
	}
	return nil
}
