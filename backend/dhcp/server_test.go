package dhcp

import (
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

var (
	serverMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	vmMAC     = net.HardwareAddr{0x52, 0x54, 0, 0xaa, 0xbb, 0xcc}
	otherMAC  = net.HardwareAddr{0x52, 0x54, 0, 0x11, 0x22, 0x33}
	serverIP  = netip.MustParseAddr("10.9.0.254")
	vmIP      = netip.MustParseAddr("10.9.0.17")
)

func testServer(t testing.TB) *Server {
	t.Helper()
	s, err := New(Config{
		Interface: "kd-test", ServerIP: serverIP,
		Subnet: api.Subnet{CIDR: "10.9.0.0/24", Gateway: "10.9.0.1", DNSServers: []string{"10.9.0.1", "9.9.9.9"}},
		MTU:    1450,
	})
	if err != nil {
		t.Fatal(err)
	}
	s.SetBindings(map[string]netip.Addr{"52:54:00:AA:BB:CC": vmIP})
	return s
}

// request is the REQUEST a client in state SELECTING sends for ip.
func request(mac net.HardwareAddr, ip string) []byte {
	return clientFrame(mac, dhcpv4.MessageTypeRequest, netip.Addr{},
		addrOpt(dhcpv4.OptionRequestedIPAddress, ip), addrOpt(dhcpv4.OptionServerIdentifier, serverIP.String()))
}

func onlyReply(t *testing.T, out [][]byte) *decoded {
	t.Helper()
	if len(out) != 1 {
		t.Fatalf("%d replies, want 1", len(out))
	}
	d := decodeOut(out[0])
	if d == nil || d.msg == nil {
		t.Fatalf("reply does not decode as Ethernet/IPv4/UDP/DHCP: %x", out[0])
	}
	if d.udp.SrcPort != ServerPort || d.udp.DstPort != ClientPort || addrOf(d.ip.SrcIP) != serverIP ||
		d.eth.SrcMAC.String() != serverMAC.String() {
		t.Fatalf("reply is not UDP 67->68 from the server: %v %v", d.ip, d.udp)
	}
	if !d.checksumOK {
		t.Fatalf("reply checksums do not verify: %x", out[0])
	}
	m := d.msg
	if m.TransactionID != (dhcpv4.TransactionID{0, 0, 0x12, 0x34}) || m.OpCode != dhcpv4.OpcodeBootReply {
		t.Fatalf("reply header %v", m)
	}
	return d
}

func TestHandleDiscoverRequest(t *testing.T) {
	s := testServer(t)
	d := onlyReply(t, s.Handle(clientFrame(vmMAC, dhcpv4.MessageTypeDiscover, netip.Addr{}), serverMAC))
	offer := d.msg
	if offer.MessageType() != dhcpv4.MessageTypeOffer || addrOf(offer.YourIPAddr) != vmIP || offer.ClientHWAddr.String() != vmMAC.String() {
		t.Fatalf("offer: %v", offer)
	}
	if d.eth.DstMAC.String() != vmMAC.String() || addrOf(d.ip.DstIP) != vmIP {
		t.Fatalf("offer sent to %s/%s, want the client's MAC and the offered address", d.eth.DstMAC, d.ip.DstIP)
	}
	mask := optAddr(offer, dhcpv4.OptionSubnetMask)
	router := optAddr(offer, dhcpv4.OptionRouter)
	sid := optAddr(offer, dhcpv4.OptionServerIdentifier)
	bcast := optAddr(offer, dhcpv4.OptionBroadcastAddress)
	lease, _ := optUint32(offer, dhcpv4.OptionIPAddressLeaseTime)
	t1, _ := optUint32(offer, dhcpv4.OptionRenewTimeValue)
	t2, _ := optUint32(offer, dhcpv4.OptionRebindingTimeValue)
	if mask.String() != "255.255.255.0" || router.String() != "10.9.0.1" || sid != serverIP || bcast.String() != "10.9.0.255" ||
		lease != 3600 || t1 != 1800 || t2 != 3150 {
		t.Fatalf("options: mask %s router %s server %s broadcast %s lease %d t1 %d t2 %d", mask, router, sid, bcast, lease, t1, t2)
	}
	if mtu := offer.Options.Get(dhcpv4.OptionInterfaceMTU); len(mtu) != 2 || int(mtu[0])<<8|int(mtu[1]) != 1450 {
		t.Fatalf("interface MTU option %v, want 1450", mtu)
	}
	if dns := optAddrs(offer, dhcpv4.OptionDomainNameServer); !slices.Equal(dns, []netip.Addr{netip.MustParseAddr("10.9.0.1"), netip.MustParseAddr("9.9.9.9")}) {
		t.Fatalf("dns %v", dns)
	}

	// REQUEST for the offer: ACK.
	ack := onlyReply(t, s.Handle(request(vmMAC, "10.9.0.17"), serverMAC)).msg
	if ack.MessageType() != dhcpv4.MessageTypeAck || addrOf(ack.YourIPAddr) != vmIP {
		t.Fatalf("ack: %v", ack)
	}
	// Renewal (unicast, ciaddr set): ACK to the client's address.
	d = onlyReply(t, s.Handle(clientFrame(vmMAC, dhcpv4.MessageTypeRequest, vmIP), serverMAC))
	if d.msg.MessageType() != dhcpv4.MessageTypeAck || addrOf(d.ip.DstIP) != vmIP || d.eth.DstMAC.String() != vmMAC.String() {
		t.Fatalf("renewal: type %s to %s/%s", d.msg.MessageType(), d.eth.DstMAC, d.ip.DstIP)
	}
	// A REQUEST for another address (e.g. what another host gave before a
	// migration): NAK, broadcast.
	d = onlyReply(t, s.Handle(clientFrame(vmMAC, dhcpv4.MessageTypeRequest, netip.Addr{},
		addrOpt(dhcpv4.OptionRequestedIPAddress, "10.9.0.99")), serverMAC))
	if nak := d.msg; nak.MessageType() != dhcpv4.MessageTypeNak || d.eth.DstMAC.String() != BroadcastMAC.String() ||
		addrOf(d.ip.DstIP) != limitedBroadcast || !addrOf(nak.YourIPAddr).IsUnspecified() {
		t.Fatalf("nak: %v to %s", nak, d.eth.DstMAC)
	}
	// A REQUEST naming another server is for that server.
	if out := s.Handle(clientFrame(vmMAC, dhcpv4.MessageTypeRequest, netip.Addr{},
		addrOpt(dhcpv4.OptionRequestedIPAddress, "10.9.0.17"), addrOpt(dhcpv4.OptionServerIdentifier, "10.9.0.253")), serverMAC); len(out) != 0 {
		t.Fatal("answered a REQUEST for another server")
	}
	// INFORM: options, no lease, unicast to ciaddr.
	d = onlyReply(t, s.Handle(clientFrame(vmMAC, dhcpv4.MessageTypeInform, vmIP), serverMAC))
	if _, ok := optUint32(d.msg, dhcpv4.OptionIPAddressLeaseTime); d.msg.MessageType() != dhcpv4.MessageTypeAck || ok ||
		addrOf(d.ip.DstIP) != vmIP || addrOf(d.msg.ClientIPAddr) != vmIP {
		t.Fatalf("inform reply %v to %s, has lease %v", d.msg, d.ip.DstIP, ok)
	}
	if out := s.Handle(clientFrame(vmMAC, dhcpv4.MessageTypeRelease, vmIP), serverMAC); len(out) != 0 {
		t.Fatal("answered a RELEASE")
	}
}

// TestReplyAddressing: RFC 2131 4.1, and never a reply to an address that
// is unset or not a host of the subnet, whatever the guest wrote.
func TestReplyAddressing(t *testing.T) {
	bcastFlag := func(m *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 { m.SetBroadcast(); return m }
	for _, c := range []struct {
		name    string
		msg     *dhcpv4.DHCPv4
		unicast netip.Addr // invalid: broadcast; no reply when none
		none    bool
	}{
		{name: "discover", msg: clientMsg(vmMAC, dhcpv4.MessageTypeDiscover, netip.Addr{}), unicast: vmIP},
		{name: "discover with the broadcast flag", msg: bcastFlag(clientMsg(vmMAC, dhcpv4.MessageTypeDiscover, netip.Addr{}))},
		{name: "renewal", msg: clientMsg(vmMAC, dhcpv4.MessageTypeRequest, vmIP), unicast: vmIP},
		{name: "renewal with the broadcast flag", msg: bcastFlag(clientMsg(vmMAC, dhcpv4.MessageTypeRequest, vmIP))},
		{name: "request with a multicast ciaddr", msg: clientMsg(vmMAC, dhcpv4.MessageTypeRequest, netip.MustParseAddr("224.0.0.1"),
			addrOpt(dhcpv4.OptionRequestedIPAddress, "10.9.0.17"))},
		{name: "request with the subnet broadcast as ciaddr", msg: clientMsg(vmMAC, dhcpv4.MessageTypeRequest, netip.MustParseAddr("10.9.0.255"),
			addrOpt(dhcpv4.OptionRequestedIPAddress, "10.9.0.17"))},
		{name: "inform", msg: clientMsg(vmMAC, dhcpv4.MessageTypeInform, vmIP), unicast: vmIP},
		// The INFORM that used to crash kvm-hostd: no ciaddr, no flag.
		{name: "inform without ciaddr", msg: clientMsg(vmMAC, dhcpv4.MessageTypeInform, netip.Addr{}), none: true},
		{name: "inform without ciaddr, broadcast flag", msg: bcastFlag(clientMsg(vmMAC, dhcpv4.MessageTypeInform, netip.Addr{})), none: true},
		{name: "inform from outside the subnet", msg: clientMsg(vmMAC, dhcpv4.MessageTypeInform, netip.MustParseAddr("192.0.2.1")), none: true},
		{name: "inform from the limited broadcast", msg: clientMsg(vmMAC, dhcpv4.MessageTypeInform, limitedBroadcast), none: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := testServer(t)
			out := s.Handle(msgFrame(vmMAC, c.msg), serverMAC)
			if c.none {
				if len(out) != 0 {
					t.Fatalf("%d replies, want none", len(out))
				}
				return
			}
			d := onlyReply(t, out)
			dstMAC, dst := d.eth.DstMAC.String(), addrOf(d.ip.DstIP)
			if c.unicast.IsValid() && (dstMAC != vmMAC.String() || dst != c.unicast) ||
				!c.unicast.IsValid() && (dstMAC != BroadcastMAC.String() || dst != limitedBroadcast) {
				t.Fatalf("reply to %s/%s, want unicast to %v (invalid: broadcast)", dstMAC, dst, c.unicast)
			}
		})
	}
}

func TestHandleIgnoresOtherMACs(t *testing.T) {
	s := testServer(t)
	for _, typ := range []dhcpv4.MessageType{dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeInform} {
		if out := s.Handle(clientFrame(otherMAC, typ, netip.Addr{}), serverMAC); len(out) != 0 {
			t.Fatalf("answered message type %s from a MAC with no reservation", typ)
		}
	}
	// After the VM leaves, its MAC gets no answer either.
	s.SetBindings(nil)
	if out := s.Handle(clientFrame(vmMAC, dhcpv4.MessageTypeDiscover, netip.Addr{}), serverMAC); len(out) != 0 {
		t.Fatal("answered a MAC whose reservation was removed")
	}
}

// TestSpoofedCHAddr: a guest that puts another VM's MAC in chaddr gets no
// answer and changes nothing, whatever the message type; its own lease
// keeps working.
func TestSpoofedCHAddr(t *testing.T) {
	attackerIP := netip.MustParseAddr("10.9.0.18")
	for _, typ := range []dhcpv4.MessageType{dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeRelease,
		dhcpv4.MessageTypeDecline, dhcpv4.MessageTypeInform} {
		for _, victimLeased := range []bool{true, false} {
			s := testServer(t)
			s.SetBindings(map[string]netip.Addr{vmMAC.String(): vmIP, otherMAC.String(): attackerIP})
			if victimLeased {
				onlyReply(t, s.Handle(request(vmMAC, vmIP.String()), serverMAC))
			}
			forged := []*dhcpv4.DHCPv4{
				// the victim's own address (would ACK and record a lease)
				clientMsg(vmMAC, typ, vmIP, addrOpt(dhcpv4.OptionRequestedIPAddress, vmIP.String())),
				// a wrong address (would NAK and end the victim's lease)
				clientMsg(vmMAC, typ, netip.Addr{}, addrOpt(dhcpv4.OptionRequestedIPAddress, "10.9.0.99")),
			}
			for _, m := range forged {
				if out := s.Handle(msgFrame(otherMAC, m), serverMAC); len(out) != 0 {
					t.Fatalf("%s with a forged chaddr answered", typ)
				}
				if ip, ok := s.Leased(vmMAC); ok != victimLeased || ok && ip != vmIP {
					t.Fatalf("%s with a forged chaddr: victim leased %s %v, want %v", typ, ip, ok, victimLeased)
				}
			}
			ack := onlyReply(t, s.Handle(request(otherMAC, attackerIP.String()), serverMAC)).msg
			if ack.MessageType() != dhcpv4.MessageTypeAck || addrOf(ack.YourIPAddr) != attackerIP {
				t.Fatalf("attacker's own REQUEST: %v", ack)
			}
			if ip, ok := s.Leased(otherMAC); !ok || ip != attackerIP {
				t.Fatalf("attacker's own lease: %s %v", ip, ok)
			}
		}
	}
}

// TestIgnoresGroupAndZeroSources: a frame whose Ethernet source is a group
// or the zero address is not from a client, even when chaddr agrees and
// has a reservation: answering it would flood (or go nowhere).
func TestIgnoresGroupAndZeroSources(t *testing.T) {
	for _, src := range []net.HardwareAddr{
		BroadcastMAC, {0x01, 0x00, 0x5e, 0, 0, 1}, {0x33, 0x33, 0, 0, 0, 1}, {0x53, 0x54, 0, 0xaa, 0xbb, 0xcc}, make(net.HardwareAddr, 6),
	} {
		s := testServer(t)
		s.SetBindings(map[string]netip.Addr{src.String(): vmIP})
		for _, f := range [][]byte{
			clientFrame(src, dhcpv4.MessageTypeDiscover, netip.Addr{}),
			request(src, vmIP.String()),
			clientFrame(src, dhcpv4.MessageTypeInform, vmIP),
			arpRequest(src, src, vmIP, serverIP),
		} {
			if out := s.Handle(f, serverMAC); len(out) != 0 {
				t.Fatalf("answered a frame from %s", src)
			}
		}
		if _, ok := s.Leased(src); ok {
			t.Fatalf("leased to %s", src)
		}
	}
}

func TestHandleARP(t *testing.T) {
	s := testServer(t)
	out := s.Handle(arpRequest(vmMAC, vmMAC, vmIP, serverIP), serverMAC)
	if len(out) != 1 {
		t.Fatalf("%d ARP replies", len(out))
	}
	d := decodeOut(out[0])
	if d == nil || d.arp == nil {
		t.Fatalf("ARP reply does not decode: %x", out[0])
	}
	a := d.arp
	if a.Operation != 2 || net.HardwareAddr(a.SourceHwAddress).String() != serverMAC.String() || addrOf(a.SourceProtAddress) != serverIP ||
		net.HardwareAddr(a.DstHwAddress).String() != vmMAC.String() || addrOf(a.DstProtAddress) != vmIP {
		t.Fatalf("ARP reply %+v", a)
	}
	if d.eth.DstMAC.String() != vmMAC.String() || d.eth.SrcMAC.String() != serverMAC.String() {
		t.Fatal("ARP reply not sent to the asker")
	}
	if len(s.Handle(arpRequest(vmMAC, vmMAC, vmIP, netip.MustParseAddr("10.9.0.1")), serverMAC)) != 0 {
		t.Fatal("answered ARP for an address that is not the server's")
	}
	// A sender hardware address that is not the frame's source (a victim's
	// MAC, a group address) gets no reply at all: it would be sent there.
	for _, sender := range []net.HardwareAddr{otherMAC, BroadcastMAC, make(net.HardwareAddr, 6)} {
		if out := s.Handle(arpRequest(vmMAC, sender, vmIP, serverIP), serverMAC); len(out) != 0 {
			t.Fatalf("answered ARP whose sender %s is not the frame's source", sender)
		}
	}
}

// TestLeasedFollowsAcks: only an address the server acknowledged counts as
// leased (what VM reads report as a lease-sourced address); an offer does
// not, a NAK, a RELEASE or a changed reservation end it.
func TestLeasedFollowsAcks(t *testing.T) {
	s := testServer(t)
	req := request(vmMAC, vmIP.String())
	s.Handle(clientFrame(vmMAC, dhcpv4.MessageTypeDiscover, netip.Addr{}), serverMAC)
	if got, ok := s.Leased(vmMAC); ok {
		t.Fatalf("leased %s after an offer only", got)
	}
	s.Handle(req, serverMAC)
	if got, ok := s.Leased(vmMAC); !ok || got != vmIP {
		t.Fatalf("after the ACK: %s %v, want %s", got, ok, vmIP)
	}
	// A RELEASE of a lease from another server is not about this one.
	s.Handle(clientFrame(vmMAC, dhcpv4.MessageTypeRelease, vmIP, addrOpt(dhcpv4.OptionServerIdentifier, "10.9.0.253")), serverMAC)
	if _, ok := s.Leased(vmMAC); !ok {
		t.Fatal("a RELEASE to another server ended the lease")
	}
	s.Handle(clientFrame(vmMAC, dhcpv4.MessageTypeRelease, vmIP, addrOpt(dhcpv4.OptionServerIdentifier, serverIP.String())), serverMAC)
	if _, ok := s.Leased(vmMAC); ok {
		t.Fatal("still leased after RELEASE")
	}
	s.Handle(req, serverMAC)
	s.Handle(clientFrame(vmMAC, dhcpv4.MessageTypeRequest, netip.Addr{}, addrOpt(dhcpv4.OptionRequestedIPAddress, "10.9.0.99")), serverMAC)
	if _, ok := s.Leased(vmMAC); ok {
		t.Fatal("still leased after a NAK")
	}
	s.Handle(req, serverMAC)
	s.SetBindings(map[string]netip.Addr{vmMAC.String(): netip.MustParseAddr("10.9.0.18")})
	if _, ok := s.Leased(vmMAC); ok {
		t.Fatal("a lease of an address that is no longer the reservation is reported")
	}
}

// TestSetBindingsSkipsUnusable: a reservation the server could not answer
// for (no IPv4 address, no MAC) is left out rather than served.
func TestSetBindingsSkipsUnusable(t *testing.T) {
	s := testServer(t)
	s.SetBindings(map[string]netip.Addr{"52:54:00:AA:BB:CC": {}, "not-a-mac": vmIP, "52:54:00:11:22:33": netip.MustParseAddr("fd00::1")})
	if b := s.Bindings(); len(b) != 0 {
		t.Fatalf("bindings %v, want none", b)
	}
	if out := s.Handle(clientFrame(vmMAC, dhcpv4.MessageTypeDiscover, netip.Addr{}), serverMAC); len(out) != 0 {
		t.Fatal("answered with an invalid reservation")
	}
}
