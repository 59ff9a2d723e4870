package dhcp

import (
	"encoding/binary"
	"net"
	"net/netip"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// Frames a guest sends and the decoding of what the server sends back,
// for the tests: built and read with the same libraries as the server,
// plus an independent checksum check (onesSum).

const testXID = 0x1234

// clientMsg is a client message of type typ from mac.
func clientMsg(mac net.HardwareAddr, typ dhcpv4.MessageType, ciaddr netip.Addr, opts ...dhcpv4.Option) *dhcpv4.DHCPv4 {
	m := &dhcpv4.DHCPv4{
		OpCode: dhcpv4.OpcodeBootRequest, HWType: iana.HWTypeEthernet, ClientHWAddr: mac,
		TransactionID: dhcpv4.TransactionID{0, 0, 0x12, 0x34},
		ClientIPAddr:  net.IPv4zero, YourIPAddr: net.IPv4zero, ServerIPAddr: net.IPv4zero, GatewayIPAddr: net.IPv4zero,
		Options: dhcpv4.OptionsFromList(append([]dhcpv4.Option{dhcpv4.OptMessageType(typ)}, opts...)...),
	}
	if ciaddr.IsValid() {
		m.ClientIPAddr = ciaddr.AsSlice()
	}
	return m
}

// msgFrame puts m in a frame from ethSrc, broadcast (as a client in state
// INIT sends it) from ciaddr or 0.0.0.0.
func msgFrame(ethSrc net.HardwareAddr, m *dhcpv4.DHCPv4) []byte {
	src := netip.IPv4Unspecified()
	if a := addrOf(m.ClientIPAddr); a.IsValid() {
		src = a
	}
	f, err := encodeUDP(ethSrc, BroadcastMAC, src, limitedBroadcast, ClientPort, ServerPort, m.ToBytes())
	if err != nil {
		panic(err)
	}
	return f
}

// clientFrame is a message of type typ that mac sends about itself.
func clientFrame(mac net.HardwareAddr, typ dhcpv4.MessageType, ciaddr netip.Addr, opts ...dhcpv4.Option) []byte {
	return msgFrame(mac, clientMsg(mac, typ, ciaddr, opts...))
}

func addrOpt(code dhcpv4.OptionCode, a string) dhcpv4.Option {
	return dhcpv4.OptGeneric(code, netip.MustParseAddr(a).AsSlice())
}

// arpRequest is an ARP request for target in a frame from ethSrc whose
// ARP sender hardware address is sender.
func arpRequest(ethSrc, sender net.HardwareAddr, senderIP, target netip.Addr) []byte {
	f, err := encodeARP(BroadcastMAC, layers.ARPRequest, sender, senderIP, make(net.HardwareAddr, 6), target)
	if err != nil {
		panic(err)
	}
	copy(f[6:12], ethSrc)
	return f
}

// decoded is a frame the server sent, decoded with gopacket.
type decoded struct {
	eth *layers.Ethernet
	ip  *layers.IPv4
	udp *layers.UDP
	arp *layers.ARP
	msg *dhcpv4.DHCPv4
	// checksumOK: the IPv4 header and UDP checksums verify by onesSum.
	checksumOK bool
}

// decodeOut decodes a frame the server sent; nil if gopacket finds it
// neither Ethernet/IPv4/UDP with a DHCP message nor Ethernet/ARP.
func decodeOut(f []byte) *decoded {
	p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
	if p.ErrorLayer() != nil {
		return nil
	}
	d := &decoded{}
	var ok bool
	if d.eth, ok = p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet); !ok {
		return nil
	}
	if a, ok := p.Layer(layers.LayerTypeARP).(*layers.ARP); ok {
		d.arp = a
		return d
	}
	d.ip, _ = p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	d.udp, _ = p.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if d.ip == nil || d.udp == nil {
		return nil
	}
	m, err := dhcpv4.FromBytes(d.udp.Payload)
	if err != nil {
		return nil
	}
	d.msg = m
	ipHdr := d.ip.Contents
	segment := append(append([]byte{}, d.udp.Contents...), d.udp.Payload...)
	pseudo := append(append([]byte{}, ipHdr[12:20]...), 0, byte(layers.IPProtocolUDP), byte(len(segment)>>8), byte(len(segment)))
	d.checksumOK = onesSum(ipHdr) == 0xffff && onesSum(pseudo, segment) == 0xffff &&
		binary.BigEndian.Uint16(d.udp.Contents[6:]) != 0 && int(d.udp.Length) == len(segment)
	return d
}

// onesSum is the Internet checksum's one's-complement sum, written here
// independently of gopacket: a segment with a right checksum sums, with
// its pseudo header, to 0xffff.
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

func optAddr(m *dhcpv4.DHCPv4, code dhcpv4.OptionCode) netip.Addr {
	v := m.Options.Get(code)
	if len(v) != 4 {
		return netip.Addr{}
	}
	return netip.AddrFrom4([4]byte(v))
}

func optAddrs(m *dhcpv4.DHCPv4, code dhcpv4.OptionCode) []netip.Addr {
	var out []netip.Addr
	for v := m.Options.Get(code); len(v) >= 4; v = v[4:] {
		out = append(out, netip.AddrFrom4([4]byte(v[:4])))
	}
	return out
}

func optUint32(m *dhcpv4.DHCPv4, code dhcpv4.OptionCode) (uint32, bool) {
	v := m.Options.Get(code)
	if len(v) != 4 {
		return 0, false
	}
	return binary.BigEndian.Uint32(v), true
}
