package dhcp

import (
	"net"
	"net/netip"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// TestEncodeUDPChecksums: the IPv4 header and UDP checksums of what the
// server sends verify the way a guest's DHCP client verifies them (ISC
// dhclient drops segments whose UDP checksum is wrong: a wrong one once
// made guests drop every offer), checked by a sum written independently
// of the encoder, for addresses whose 16-bit halves carry into each other
// and for even and odd payloads.
func TestEncodeUDPChecksums(t *testing.T) {
	mac := func(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }
	for _, c := range []struct{ src, dst string }{
		{"10.21.0.254", "10.21.0.17"},
		{"10.9.0.254", "255.255.255.255"},
		{"192.168.255.253", "192.168.254.255"},
		{"172.31.255.255", "172.16.0.1"},
	} {
		for _, size := range []int{300, 301} {
			payload := make([]byte, size)
			for i := range payload {
				payload[i] = byte(i*7 + 3)
			}
			// A DHCP message, so that decodeOut accepts the frame, padded
			// to the size wanted.
			m := clientMsg(vmMAC, dhcpv4.MessageTypeDiscover, netip.Addr{})
			b := m.ToBytes()
			b = append(b, payload[:max(0, size-len(b))]...)
			f, err := encodeUDP(mac("a2:00:00:00:00:01"), mac("52:54:00:00:00:02"),
				netip.MustParseAddr(c.src), netip.MustParseAddr(c.dst), ServerPort, ClientPort, b)
			if err != nil {
				t.Fatal(err)
			}
			d := decodeOut(f)
			if d == nil || d.ip == nil {
				t.Fatalf("%s -> %s: frame does not decode: %x", c.src, c.dst, f)
			}
			if !d.checksumOK || len(d.udp.Payload) != len(b) || addrOf(d.ip.DstIP).String() != c.dst {
				t.Errorf("%s -> %s, %d-byte payload: checksums or lengths wrong: %x", c.src, c.dst, len(b), f)
			}
		}
	}
}

// TestEncodeRefusesUnsetAddresses: the encoders return an error, not a
// frame nor a panic, for addresses that are unset or not IPv4.
func TestEncodeRefusesUnsetAddresses(t *testing.T) {
	for _, a := range []netip.Addr{{}, netip.MustParseAddr("fd00::1")} {
		if _, err := encodeUDP(serverMAC, vmMAC, serverIP, a, ServerPort, ClientPort, nil); err == nil {
			t.Errorf("encodeUDP to %v: no error", a)
		}
		if _, err := encodeARP(vmMAC, 2, serverMAC, serverIP, vmMAC, a); err == nil {
			t.Errorf("encodeARP to %v: no error", a)
		}
	}
	if _, err := encodeUDP(serverMAC, nil, serverIP, vmIP, ServerPort, ClientPort, nil); err == nil {
		t.Error("encodeUDP to no MAC: no error")
	}
}
