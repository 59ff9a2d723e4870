package dhcp

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"slices"
)

// DHCP message types (option 53).
const (
	Discover byte = 1
	Offer    byte = 2
	Request  byte = 3
	Decline  byte = 4
	Ack      byte = 5
	Nak      byte = 6
	Release  byte = 7
	Inform   byte = 8
)

// DHCP option codes used here (RFC 2132).
const (
	OptSubnetMask  byte = 1
	OptRouter      byte = 3
	OptDNS         byte = 6
	OptMTU         byte = 26
	OptBroadcast   byte = 28
	OptRequestedIP byte = 50
	OptLeaseTime   byte = 51
	OptMessageType byte = 53
	OptServerID    byte = 54
	OptMessage     byte = 56
	OptT1          byte = 58
	OptT2          byte = 59
	optPad         byte = 0
	optEnd         byte = 255
)

const (
	opRequest  = 1
	opReply    = 2
	headerLen  = 236
	minMsgLen  = 300 // BOOTP minimum, which some clients insist on
	flagBcast  = 0x8000
	ServerPort = 67
	ClientPort = 68
)

var magicCookie = [4]byte{99, 130, 83, 99}

// Message is a DHCPv4 message (RFC 2131), the parts kvm-hostd uses.
type Message struct {
	Op      byte
	XID     uint32
	Secs    uint16
	Flags   uint16
	CIAddr  netip.Addr
	YIAddr  netip.Addr
	SIAddr  netip.Addr
	GIAddr  netip.Addr
	CHAddr  net.HardwareAddr
	Options map[byte][]byte
}

// Type is the message type option, 0 when absent.
func (m *Message) Type() byte {
	if v := m.Options[OptMessageType]; len(v) == 1 {
		return v[0]
	}
	return 0
}

// Broadcast reports the client's broadcast flag.
func (m *Message) Broadcast() bool { return m.Flags&flagBcast != 0 }

// OptionAddr reads an option holding one IPv4 address.
func (m *Message) OptionAddr(code byte) (netip.Addr, bool) {
	v := m.Options[code]
	if len(v) != 4 {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4([4]byte(v)), true
}

// OptionAddrs reads an option holding a list of IPv4 addresses.
func (m *Message) OptionAddrs(code byte) []netip.Addr {
	v := m.Options[code]
	var out []netip.Addr
	for len(v) >= 4 {
		out = append(out, netip.AddrFrom4([4]byte(v[:4])))
		v = v[4:]
	}
	return out
}

// OptionUint32 reads a 4-byte option (lease times).
func (m *Message) OptionUint32(code byte) (uint32, bool) {
	v := m.Options[code]
	if len(v) != 4 {
		return 0, false
	}
	return binary.BigEndian.Uint32(v), true
}

var errShort = errors.New("dhcp: message too short")

func addr4(b []byte) netip.Addr { return netip.AddrFrom4([4]byte(b[:4])) }

// ParseMessage decodes a DHCP message (the UDP payload).
func ParseMessage(b []byte) (*Message, error) {
	if len(b) < headerLen+4 {
		return nil, errShort
	}
	if [4]byte(b[headerLen:headerLen+4]) != magicCookie {
		return nil, errors.New("dhcp: no magic cookie (plain BOOTP)")
	}
	hlen := int(b[2])
	if b[1] != 1 || hlen != 6 {
		return nil, errors.New("dhcp: not an Ethernet client")
	}
	m := &Message{
		Op:      b[0],
		XID:     binary.BigEndian.Uint32(b[4:8]),
		Secs:    binary.BigEndian.Uint16(b[8:10]),
		Flags:   binary.BigEndian.Uint16(b[10:12]),
		CIAddr:  addr4(b[12:]),
		YIAddr:  addr4(b[16:]),
		SIAddr:  addr4(b[20:]),
		GIAddr:  addr4(b[24:]),
		CHAddr:  net.HardwareAddr(slices.Clone(b[28 : 28+hlen])),
		Options: map[byte][]byte{},
	}
	opts := b[headerLen+4:]
	for len(opts) > 0 {
		code := opts[0]
		if code == optEnd {
			break
		}
		if code == optPad {
			opts = opts[1:]
			continue
		}
		if len(opts) < 2 || len(opts) < 2+int(opts[1]) {
			return nil, errors.New("dhcp: truncated option")
		}
		n := int(opts[1])
		// Repeated options concatenate (RFC 3396).
		m.Options[code] = append(m.Options[code], opts[2:2+n]...)
		opts = opts[2+n:]
	}
	return m, nil
}

// Marshal encodes m. The message type goes first, then the other options
// in code order.
func (m *Message) Marshal() []byte {
	b := make([]byte, headerLen, minMsgLen)
	b[0], b[1], b[2] = m.Op, 1, 6
	binary.BigEndian.PutUint32(b[4:], m.XID)
	binary.BigEndian.PutUint16(b[8:], m.Secs)
	binary.BigEndian.PutUint16(b[10:], m.Flags)
	for i, a := range []netip.Addr{m.CIAddr, m.YIAddr, m.SIAddr, m.GIAddr} {
		if a.Is4() {
			v := a.As4()
			copy(b[12+4*i:], v[:])
		}
	}
	copy(b[28:44], m.CHAddr)
	b = append(b, magicCookie[:]...)
	codes := make([]byte, 0, len(m.Options))
	for c := range m.Options {
		if c != OptMessageType {
			codes = append(codes, c)
		}
	}
	slices.Sort(codes)
	if _, ok := m.Options[OptMessageType]; ok {
		codes = append([]byte{OptMessageType}, codes...)
	}
	for _, c := range codes {
		v := m.Options[c]
		for first := true; first || len(v) > 0; first = false {
			n := min(len(v), 255)
			b = append(b, c, byte(n))
			b = append(b, v[:n]...)
			v = v[n:]
		}
	}
	b = append(b, optEnd)
	for len(b) < minMsgLen {
		b = append(b, optPad)
	}
	return b
}

// addrBytes encodes IPv4 addresses as an option value.
func addrBytes(as ...netip.Addr) []byte {
	var b []byte
	for _, a := range as {
		v := a.As4()
		b = append(b, v[:]...)
	}
	return b
}

func uint32Bytes(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
