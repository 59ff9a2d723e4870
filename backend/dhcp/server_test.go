package dhcp

import (
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

var (
	serverMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	vmMAC     = net.HardwareAddr{0x52, 0x54, 0, 0xaa, 0xbb, 0xcc}
	otherMAC  = net.HardwareAddr{0x52, 0x54, 0, 0x11, 0x22, 0x33}
)

func testServer(t *testing.T) *Server {
	t.Helper()
	s, err := New(Config{
		Interface: "kd-test", ServerIP: netip.MustParseAddr("10.9.0.254"),
		Subnet: api.Subnet{CIDR: "10.9.0.0/24", Gateway: "10.9.0.1", DNSServers: []string{"10.9.0.1", "9.9.9.9"}},
		MTU:    1450,
	})
	if err != nil {
		t.Fatal(err)
	}
	s.SetBindings(map[string]netip.Addr{"52:54:00:AA:BB:CC": netip.MustParseAddr("10.9.0.17")})
	return s
}

// clientFrame is what a client in state INIT (no address) broadcasts.
func clientFrame(mac net.HardwareAddr, typ byte, opts map[byte][]byte, ciaddr netip.Addr) []byte {
	m := &Message{Op: opRequest, XID: 0x1234, CHAddr: mac, CIAddr: ciaddr, Options: map[byte][]byte{OptMessageType: {typ}}}
	for k, v := range opts {
		m.Options[k] = v
	}
	src := netip.IPv4Unspecified()
	if ciaddr.IsValid() {
		src = ciaddr
	}
	return EncodeUDP(UDPPacket{SrcMAC: mac, DstMAC: BroadcastMAC, Src: src, Dst: netip.MustParseAddr("255.255.255.255"),
		SrcPort: ClientPort, DstPort: ServerPort, Payload: m.Marshal()})
}

func onlyReply(t *testing.T, out [][]byte) (*UDPPacket, *Message) {
	t.Helper()
	if len(out) != 1 {
		t.Fatalf("%d replies, want 1", len(out))
	}
	p, ok := DecodeUDP(out[0])
	if !ok || p.SrcPort != ServerPort || p.DstPort != ClientPort || p.Src != netip.MustParseAddr("10.9.0.254") {
		t.Fatalf("reply is not UDP 67->68 from the server: %+v", p)
	}
	m, err := ParseMessage(p.Payload)
	if err != nil {
		t.Fatal(err)
	}
	if m.XID != 0x1234 || m.Op != opReply || m.CHAddr.String() != vmMAC.String() {
		t.Fatalf("reply header %+v", m)
	}
	return p, m
}

func TestHandleDiscoverRequest(t *testing.T) {
	s := testServer(t)
	p, offer := onlyReply(t, s.Handle(clientFrame(vmMAC, Discover, nil, netip.Addr{}), serverMAC))
	if offer.Type() != Offer || offer.YIAddr != netip.MustParseAddr("10.9.0.17") {
		t.Fatalf("offer: type %d yiaddr %s", offer.Type(), offer.YIAddr)
	}
	if p.DstMAC.String() != vmMAC.String() || p.Dst != offer.YIAddr {
		t.Fatalf("offer sent to %s/%s, want the client's MAC and the offered address", p.DstMAC, p.Dst)
	}
	mask, _ := offer.OptionAddr(OptSubnetMask)
	router, _ := offer.OptionAddr(OptRouter)
	sid, _ := offer.OptionAddr(OptServerID)
	lease, _ := offer.OptionUint32(OptLeaseTime)
	t1, _ := offer.OptionUint32(OptT1)
	t2, _ := offer.OptionUint32(OptT2)
	if mask.String() != "255.255.255.0" || router.String() != "10.9.0.1" || sid.String() != "10.9.0.254" ||
		lease != 3600 || t1 != 1800 || t2 != 3150 {
		t.Fatalf("options: mask %s router %s server %s lease %d t1 %d t2 %d", mask, router, sid, lease, t1, t2)
	}
	if mtu := offer.Options[OptMTU]; len(mtu) != 2 || int(mtu[0])<<8|int(mtu[1]) != 1450 {
		t.Fatalf("interface MTU option %v, want 1450", mtu)
	}
	if dns := offer.OptionAddrs(OptDNS); !slices.Equal(dns, []netip.Addr{netip.MustParseAddr("10.9.0.1"), netip.MustParseAddr("9.9.9.9")}) {
		t.Fatalf("dns %v", dns)
	}

	// REQUEST for the offer: ACK.
	_, ack := onlyReply(t, s.Handle(clientFrame(vmMAC, Request, map[byte][]byte{
		OptRequestedIP: addrBytes(netip.MustParseAddr("10.9.0.17")), OptServerID: addrBytes(netip.MustParseAddr("10.9.0.254")),
	}, netip.Addr{}), serverMAC))
	if ack.Type() != Ack || ack.YIAddr.String() != "10.9.0.17" {
		t.Fatalf("ack: type %d yiaddr %s", ack.Type(), ack.YIAddr)
	}
	// Renewal (unicast, ciaddr set): ACK to the client's address.
	p, ack = onlyReply(t, s.Handle(clientFrame(vmMAC, Request, nil, netip.MustParseAddr("10.9.0.17")), serverMAC))
	if ack.Type() != Ack || p.Dst.String() != "10.9.0.17" {
		t.Fatalf("renewal: type %d to %s", ack.Type(), p.Dst)
	}
	// A REQUEST for another address (e.g. what another host gave before a
	// migration): NAK, broadcast.
	p, nak := onlyReply(t, s.Handle(clientFrame(vmMAC, Request, map[byte][]byte{
		OptRequestedIP: addrBytes(netip.MustParseAddr("10.9.0.99")),
	}, netip.Addr{}), serverMAC))
	if nak.Type() != Nak || p.DstMAC.String() != BroadcastMAC.String() || nak.YIAddr.IsValid() && !nak.YIAddr.IsUnspecified() {
		t.Fatalf("nak: type %d to %s yiaddr %s", nak.Type(), p.DstMAC, nak.YIAddr)
	}
	// A REQUEST naming another server is for that server.
	if out := s.Handle(clientFrame(vmMAC, Request, map[byte][]byte{
		OptRequestedIP: addrBytes(netip.MustParseAddr("10.9.0.17")), OptServerID: addrBytes(netip.MustParseAddr("10.9.0.253")),
	}, netip.Addr{}), serverMAC); len(out) != 0 {
		t.Fatal("answered a REQUEST for another server")
	}
	// INFORM: options, no lease.
	_, inf := onlyReply(t, s.Handle(clientFrame(vmMAC, Inform, nil, netip.MustParseAddr("10.9.0.17")), serverMAC))
	if _, ok := inf.OptionUint32(OptLeaseTime); inf.Type() != Ack || ok {
		t.Fatalf("inform reply type %d, has lease %v", inf.Type(), ok)
	}
	if out := s.Handle(clientFrame(vmMAC, Release, nil, netip.MustParseAddr("10.9.0.17")), serverMAC); len(out) != 0 {
		t.Fatal("answered a RELEASE")
	}
}

func TestHandleIgnoresOtherMACs(t *testing.T) {
	s := testServer(t)
	for _, typ := range []byte{Discover, Request, Inform} {
		if out := s.Handle(clientFrame(otherMAC, typ, nil, netip.Addr{}), serverMAC); len(out) != 0 {
			t.Fatalf("answered message type %d from a MAC with no reservation", typ)
		}
	}
	// After the VM leaves, its MAC gets no answer either.
	s.SetBindings(nil)
	if out := s.Handle(clientFrame(vmMAC, Discover, nil, netip.Addr{}), serverMAC); len(out) != 0 {
		t.Fatal("answered a MAC whose reservation was removed")
	}
}

func TestHandleARP(t *testing.T) {
	s := testServer(t)
	req := EncodeARP(BroadcastMAC, ARP{Op: ARPRequest, SenderMAC: vmMAC, SenderIP: netip.MustParseAddr("10.9.0.17"),
		TargetIP: netip.MustParseAddr("10.9.0.254")})
	out := s.Handle(req, serverMAC)
	if len(out) != 1 {
		t.Fatalf("%d ARP replies", len(out))
	}
	a, ok := DecodeARP(out[0])
	if !ok || a.Op != ARPReply || a.SenderMAC.String() != serverMAC.String() || a.SenderIP.String() != "10.9.0.254" ||
		a.TargetMAC.String() != vmMAC.String() || a.TargetIP.String() != "10.9.0.17" {
		t.Fatalf("ARP reply %+v", a)
	}
	if string(out[0][:6]) != string(vmMAC) {
		t.Fatal("ARP reply not sent to the asker")
	}
	other := EncodeARP(BroadcastMAC, ARP{Op: ARPRequest, SenderMAC: vmMAC, SenderIP: netip.MustParseAddr("10.9.0.17"),
		TargetIP: netip.MustParseAddr("10.9.0.1")})
	if len(s.Handle(other, serverMAC)) != 0 {
		t.Fatal("answered ARP for an address that is not the server's")
	}
}

func TestMessageRoundTrip(t *testing.T) {
	long := make([]byte, 300) // split into two options and joined again
	for i := range long {
		long[i] = byte(i)
	}
	m := &Message{Op: opRequest, XID: 7, Flags: flagBcast, CHAddr: vmMAC, CIAddr: netip.MustParseAddr("10.0.0.1"),
		Options: map[byte][]byte{OptMessageType: {Discover}, 250: long}}
	got, err := ParseMessage(m.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	if got.XID != 7 || !got.Broadcast() || got.CIAddr != m.CIAddr || got.Type() != Discover || !slices.Equal(got.Options[250], long) {
		t.Fatalf("round trip: %+v", got)
	}
	if _, err := ParseMessage(m.Marshal()[:200]); err == nil {
		t.Fatal("parsed a truncated message")
	}
}

// TestLeasedFollowsAcks: only an address the server acknowledged counts as
// leased (what VM reads report as a lease-sourced address); an offer does
// not, a NAK, a RELEASE or a changed reservation end it.
func TestLeasedFollowsAcks(t *testing.T) {
	s := testServer(t)
	ip := netip.MustParseAddr("10.9.0.17")
	request := clientFrame(vmMAC, Request, map[byte][]byte{
		OptRequestedIP: addrBytes(ip), OptServerID: addrBytes(netip.MustParseAddr("10.9.0.254")),
	}, netip.Addr{})
	s.Handle(clientFrame(vmMAC, Discover, nil, netip.Addr{}), serverMAC)
	if got, ok := s.Leased(vmMAC); ok {
		t.Fatalf("leased %s after an offer only", got)
	}
	s.Handle(request, serverMAC)
	if got, ok := s.Leased(vmMAC); !ok || got != ip {
		t.Fatalf("after the ACK: %s %v, want %s", got, ok, ip)
	}
	s.Handle(clientFrame(vmMAC, Release, nil, ip), serverMAC)
	if _, ok := s.Leased(vmMAC); ok {
		t.Fatal("still leased after RELEASE")
	}
	s.Handle(request, serverMAC)
	s.Handle(clientFrame(vmMAC, Request, map[byte][]byte{OptRequestedIP: addrBytes(netip.MustParseAddr("10.9.0.99"))}, netip.Addr{}), serverMAC)
	if _, ok := s.Leased(vmMAC); ok {
		t.Fatal("still leased after a NAK")
	}
	s.Handle(request, serverMAC)
	s.SetBindings(map[string]netip.Addr{vmMAC.String(): netip.MustParseAddr("10.9.0.18")})
	if _, ok := s.Leased(vmMAC); ok {
		t.Fatal("a lease of an address that is no longer the reservation is reported")
	}
}
