package api

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
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
