package dhcp

import (
	"bytes"
	"errors"
	"net"
	"net/netip"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Ethernet, IPv4, UDP and ARP framing for the raw socket, with gopacket's
// layers: the server reads and writes whole Ethernet frames on its port.
// Everything in a received frame comes from a guest, so decoding checks
// every length and address it later relies on and reports only frames
// that passed.

// DHCP's UDP ports.
const (
	ServerPort = 67
	ClientPort = 68
)

// BroadcastMAC is ff:ff:ff:ff:ff:ff.
var BroadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

var limitedBroadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

// unicastMAC reports whether mac can be the source of a frame: six bytes,
// not a group (multicast or broadcast) address, not all zeros. Replies go
// to the source of what they answer, so a group or zero source would make
// the server flood or send to nobody on a guest's say-so.
func unicastMAC(mac net.HardwareAddr) bool {
	return len(mac) == 6 && mac[0]&1 == 0 && !bytes.Equal(mac, make([]byte, 6))
}

// inFrame is a received frame that passed decoding: either ARP (arp set)
// or a DHCP client message (msg set).
type inFrame struct {
	src net.HardwareAddr // Ethernet source, always a unicastMAC
	arp *layers.ARP
	msg *dhcpv4.DHCPv4
}

var errNotOurs = errors.New("not DHCP or ARP for the server")

// decodeFrame decodes an untagged Ethernet frame carrying either an
// Ethernet/IPv4 ARP packet or a DHCP message to the server port in an
// unfragmented IPv4/UDP datagram. Checksums are not verified: frames from a
// VM's virtio NIC may carry partial ones (checksum offload).
func decodeFrame(f []byte) (*inFrame, error) {
	var eth layers.Ethernet
	if err := eth.DecodeFromBytes(f, gopacket.NilDecodeFeedback); err != nil {
		return nil, err
	}
	if !unicastMAC(eth.SrcMAC) {
		return nil, errors.New("ethernet source is not a unicast address")
	}
	// The decoded layers alias f, which the receive loop reuses.
	src := net.HardwareAddr(bytes.Clone(eth.SrcMAC))
	switch eth.EthernetType {
	case layers.EthernetTypeARP:
		var a layers.ARP
		if err := a.DecodeFromBytes(eth.Payload, gopacket.NilDecodeFeedback); err != nil {
			return nil, err
		}
		if a.AddrType != layers.LinkTypeEthernet || a.Protocol != layers.EthernetTypeIPv4 ||
			a.HwAddressSize != 6 || a.ProtAddressSize != 4 {
			return nil, errNotOurs
		}
		a.SourceHwAddress = bytes.Clone(a.SourceHwAddress)
		a.SourceProtAddress = bytes.Clone(a.SourceProtAddress)
		a.DstHwAddress = bytes.Clone(a.DstHwAddress)
		a.DstProtAddress = bytes.Clone(a.DstProtAddress)
		return &inFrame{src: src, arp: &a}, nil
	case layers.EthernetTypeIPv4:
	default:
		return nil, errNotOurs
	}
	var ip layers.IPv4
	if err := ip.DecodeFromBytes(eth.Payload, gopacket.NilDecodeFeedback); err != nil {
		return nil, err
	}
	// A length of 0 (TSO) or past the frame is a truncated or bogus
	// packet; fragments are not DHCP.
	if ip.Version != 4 || ip.Protocol != layers.IPProtocolUDP || ip.Length == 0 || int(ip.Length) > len(eth.Payload) ||
		ip.FragOffset != 0 || ip.Flags&layers.IPv4MoreFragments != 0 {
		return nil, errNotOurs
	}
	var udp layers.UDP
	if err := udp.DecodeFromBytes(ip.Payload, gopacket.NilDecodeFeedback); err != nil {
		return nil, err
	}
	if udp.DstPort != ServerPort || int(udp.Length) < 8 || int(udp.Length) > len(ip.Payload) {
		return nil, errNotOurs
	}
	m, err := dhcpv4.FromBytes(udp.Payload)
	if err != nil {
		return nil, err
	}
	return &inFrame{src: src, msg: m}, nil
}

var serializeOpts = gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}

// encodeUDP builds an Ethernet/IPv4/UDP frame with correct lengths and
// checksums (guests' DHCP clients drop segments whose UDP checksum is
// wrong). It refuses addresses that are not IPv4 or MACs that are not six
// bytes rather than send a frame nobody can read.
func encodeUDP(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, srcPort, dstPort uint16, payload []byte) ([]byte, error) {
	if !src.Is4() || !dst.Is4() {
		return nil, errors.New("dhcp: UDP frame needs IPv4 addresses")
	}
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	udp := &layers.UDP{SrcPort: layers.UDPPort(srcPort), DstPort: layers.UDPPort(dstPort)}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		return nil, err
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, serializeOpts, eth, ip, udp, gopacket.Payload(payload)); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// encodeARP builds the Ethernet frame of an Ethernet/IPv4 ARP packet from
// senderMAC to dst.
func encodeARP(dst net.HardwareAddr, op uint16, senderMAC net.HardwareAddr, senderIP netip.Addr,
	targetMAC net.HardwareAddr, targetIP netip.Addr) ([]byte, error) {
	if !senderIP.Is4() || !targetIP.Is4() || len(senderMAC) != 6 || len(targetMAC) != 6 {
		return nil, errors.New("dhcp: ARP needs IPv4 addresses and Ethernet MACs")
	}
	eth := &layers.Ethernet{SrcMAC: senderMAC, DstMAC: dst, EthernetType: layers.EthernetTypeARP}
	a := &layers.ARP{
		AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		Operation:       op,
		SourceHwAddress: senderMAC, SourceProtAddress: senderIP.AsSlice(),
		DstHwAddress: targetMAC, DstProtAddress: targetIP.AsSlice(),
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, serializeOpts, eth, a); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
