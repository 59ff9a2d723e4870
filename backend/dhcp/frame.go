package dhcp

import (
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
)

// Ethernet, IPv4, UDP and ARP framing for the raw socket: the server
// reads and writes whole Ethernet frames on its port.

const (
	etherTypeIPv4 = 0x0800
	etherTypeARP  = 0x0806
	etherHdrLen   = 14
	minFrameLen   = 60 // without FCS
	protoUDP      = 17
)

// BroadcastMAC is ff:ff:ff:ff:ff:ff.
var BroadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// UDPPacket is a UDP datagram in an IPv4 packet in an Ethernet frame.
type UDPPacket struct {
	SrcMAC, DstMAC   net.HardwareAddr
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Payload          []byte
}

func checksum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

func ethernet(dst, src net.HardwareAddr, etherType uint16, payload []byte) []byte {
	f := make([]byte, 0, max(etherHdrLen+len(payload), minFrameLen))
	f = append(f, dst[:6]...)
	f = append(f, src[:6]...)
	f = binary.BigEndian.AppendUint16(f, etherType)
	f = append(f, payload...)
	for len(f) < minFrameLen {
		f = append(f, 0)
	}
	return f
}

// EncodeUDP builds the Ethernet frame of p, with IPv4 and UDP checksums.
func EncodeUDP(p UDPPacket) []byte {
	udpLen := 8 + len(p.Payload)
	ip := make([]byte, 20, 20+udpLen)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+udpLen))
	ip[8] = 64 // TTL
	ip[9] = protoUDP
	src, dst := p.Src.As4(), p.Dst.As4()
	copy(ip[12:], src[:])
	copy(ip[16:], dst[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(ip[:20], 0))

	udp := make([]byte, 8, udpLen)
	binary.BigEndian.PutUint16(udp[0:], p.SrcPort)
	binary.BigEndian.PutUint16(udp[2:], p.DstPort)
	binary.BigEndian.PutUint16(udp[4:], uint16(udpLen))
	udp = append(udp, p.Payload...)
	// pseudo header: src, dst, zero, protocol, UDP length
	var pseudo uint32
	for _, w := range [][]byte{src[:], dst[:]} {
		pseudo += (uint32(w[0])<<8 | uint32(w[1])) + (uint32(w[2])<<8 | uint32(w[3]))
	}
	pseudo += protoUDP + uint32(udpLen)
	cs := checksum(udp, pseudo)
	if cs == 0 {
		cs = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], cs)
	return ethernet(p.DstMAC, p.SrcMAC, etherTypeIPv4, append(ip, udp...))
}

// DecodeUDP parses an untagged Ethernet frame holding IPv4/UDP. Checksums
// are not verified: frames from a VM's virtio NIC may carry partial ones.
func DecodeUDP(f []byte) (*UDPPacket, bool) {
	if len(f) < etherHdrLen+20+8 || binary.BigEndian.Uint16(f[12:]) != etherTypeIPv4 {
		return nil, false
	}
	ip := f[etherHdrLen:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[0]>>4 != 4 || ihl < 20 || ip[9] != protoUDP || len(ip) < ihl+8 {
		return nil, false
	}
	// fragments are not DHCP
	if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
		return nil, false
	}
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if total > len(ip) || total < ihl+8 {
		return nil, false
	}
	udp := ip[ihl:total]
	ulen := int(binary.BigEndian.Uint16(udp[4:]))
	if ulen < 8 || ulen > len(udp) {
		return nil, false
	}
	return &UDPPacket{
		DstMAC: net.HardwareAddr(slices.Clone(f[0:6])), SrcMAC: net.HardwareAddr(slices.Clone(f[6:12])),
		Src: addr4(ip[12:]), Dst: addr4(ip[16:]),
		SrcPort: binary.BigEndian.Uint16(udp[0:]), DstPort: binary.BigEndian.Uint16(udp[2:]),
		Payload: slices.Clone(udp[8:ulen]),
	}, true
}

// ARP operations.
const (
	ARPRequest uint16 = 1
	ARPReply   uint16 = 2
)

// ARP is an Ethernet/IPv4 ARP packet.
type ARP struct {
	Op                   uint16
	SenderMAC, TargetMAC net.HardwareAddr
	SenderIP, TargetIP   netip.Addr
}

// EncodeARP builds the Ethernet frame of a, sent from a.SenderMAC to dst.
func EncodeARP(dst net.HardwareAddr, a ARP) []byte {
	b := make([]byte, 8, 28)
	binary.BigEndian.PutUint16(b[0:], 1) // Ethernet
	binary.BigEndian.PutUint16(b[2:], etherTypeIPv4)
	b[4], b[5] = 6, 4
	binary.BigEndian.PutUint16(b[6:], a.Op)
	sip, tip := a.SenderIP.As4(), a.TargetIP.As4()
	tmac := a.TargetMAC
	if tmac == nil {
		tmac = make(net.HardwareAddr, 6)
	}
	b = append(b, a.SenderMAC[:6]...)
	b = append(b, sip[:]...)
	b = append(b, tmac[:6]...)
	b = append(b, tip[:]...)
	return ethernet(dst, a.SenderMAC, etherTypeARP, b)
}

// DecodeARP parses an untagged Ethernet/IPv4 ARP frame.
func DecodeARP(f []byte) (*ARP, bool) {
	if len(f) < etherHdrLen+28 || binary.BigEndian.Uint16(f[12:]) != etherTypeARP {
		return nil, false
	}
	b := f[etherHdrLen:]
	if binary.BigEndian.Uint16(b[0:]) != 1 || binary.BigEndian.Uint16(b[2:]) != etherTypeIPv4 || b[4] != 6 || b[5] != 4 {
		return nil, false
	}
	return &ARP{
		Op:        binary.BigEndian.Uint16(b[6:]),
		SenderMAC: net.HardwareAddr(slices.Clone(b[8:14])), SenderIP: addr4(b[14:]),
		TargetMAC: net.HardwareAddr(slices.Clone(b[18:24])), TargetIP: addr4(b[24:]),
	}, true
}
