package dhcp

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
)

// onesSum is the Internet checksum's one's-complement sum, written here
// independently of the encoder: a segment with a right checksum sums,
// with its pseudo header, to 0xffff.
func onesSum(parts ...[]byte) uint16 {
	var sum uint64
	for _, b := range parts {
		for i := 0; i < len(b); i += 2 {
			w := uint64(b[i]) << 8
			if i+1 < len(b) {
				w |= uint64(b[i+1])
			}
			sum += w
		}
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// TestEncodeUDPChecksums: the IPv4 header and UDP checksums of what the
// server sends verify the way a guest's DHCP client verifies them (ISC
// dhclient drops segments whose UDP checksum is wrong), for addresses whose
// 16-bit halves carry into each other.
func TestEncodeUDPChecksums(t *testing.T) {
	mac := func(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }
	for _, c := range []struct{ src, dst string }{
		{"10.21.0.254", "10.21.0.17"},
		{"10.9.0.254", "255.255.255.255"},
		{"192.168.255.253", "192.168.254.255"},
		{"172.31.255.255", "172.16.0.1"},
	} {
		for _, size := range []int{300, 301} { // even and odd payloads
			payload := make([]byte, size)
			for i := range payload {
				payload[i] = byte(i*7 + 3)
			}
			f := EncodeUDP(UDPPacket{
				SrcMAC: mac("a2:00:00:00:00:01"), DstMAC: mac("52:54:00:00:00:02"),
				Src: netip.MustParseAddr(c.src), Dst: netip.MustParseAddr(c.dst),
				SrcPort: ServerPort, DstPort: ClientPort, Payload: payload,
			})
			ip := f[14:34]
			if got := onesSum(ip); got != 0xffff {
				t.Errorf("%s -> %s: IPv4 header sums to %#04x, want 0xffff", c.src, c.dst, got)
			}
			udpLen := int(binary.BigEndian.Uint16(f[34+4:]))
			udp := f[34 : 34+udpLen]
			pseudo := append(append(append([]byte{}, ip[12:20]...), 0, protoUDP), byte(udpLen>>8), byte(udpLen))
			if got := onesSum(pseudo, udp); got != 0xffff {
				t.Errorf("%s -> %s, %d-byte payload: UDP segment sums to %#04x, want 0xffff", c.src, c.dst, size, got)
			}
		}
	}
}
