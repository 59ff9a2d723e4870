package dhcp

import (
	"bytes"
	"net"
	"net/netip"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// FuzzServerHandle drives the server's whole frame handling with arbitrary
// frames, as a guest can send them. Handle must not panic (the receive
// loop's recover is a last resort, not the fix), and every frame it emits
// must decode as Ethernet/ARP or Ethernet/IPv4/UDP/DHCP with correct
// checksums, go to the received frame's source or to broadcast, and the
// frame must not change the lease of any MAC but its source's.
func FuzzServerHandle(f *testing.F) {
	bcast := func(m *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 { m.SetBroadcast(); return m }
	for _, seed := range [][]byte{
		clientFrame(vmMAC, dhcpv4.MessageTypeDiscover, netip.Addr{}),
		msgFrame(vmMAC, bcast(clientMsg(vmMAC, dhcpv4.MessageTypeDiscover, netip.Addr{}))),
		request(vmMAC, vmIP.String()),
		request(vmMAC, "10.9.0.99"),
		clientFrame(vmMAC, dhcpv4.MessageTypeRequest, vmIP),
		clientFrame(vmMAC, dhcpv4.MessageTypeInform, vmIP),
		// The INFORM that used to crash kvm-hostd.
		clientFrame(vmMAC, dhcpv4.MessageTypeInform, netip.Addr{}),
		clientFrame(vmMAC, dhcpv4.MessageTypeRelease, vmIP),
		clientFrame(vmMAC, dhcpv4.MessageTypeDecline, netip.Addr{}, addrOpt(dhcpv4.OptionRequestedIPAddress, vmIP.String())),
		msgFrame(otherMAC, clientMsg(vmMAC, dhcpv4.MessageTypeRequest, vmIP)),
		msgFrame(otherMAC, clientMsg(vmMAC, dhcpv4.MessageTypeRelease, vmIP)),
		arpRequest(vmMAC, vmMAC, vmIP, serverIP),
		arpRequest(otherMAC, vmMAC, vmIP, serverIP),
	} {
		f.Add(seed)
	}
	otherIP := netip.MustParseAddr("10.9.0.18")
	thirdMAC := net.HardwareAddr{0x52, 0x54, 0, 0x33, 0x33, 0x33}
	macs := []net.HardwareAddr{vmMAC, otherMAC, thirdMAC}
	f.Fuzz(func(t *testing.T, frame []byte) {
		s := testServer(t)
		s.SetBindings(map[string]netip.Addr{vmMAC.String(): vmIP, otherMAC.String(): otherIP, thirdMAC.String(): netip.MustParseAddr("10.9.0.19")})
		// vmMAC and otherMAC hold leases, thirdMAC none.
		for _, m := range macs[:2] {
			ip, _ := s.binding(m)
			if len(s.Handle(request(m, ip.String()), serverMAC)) != 1 {
				t.Fatal("setup REQUEST not answered")
			}
		}
		type state struct {
			ip netip.Addr
			ok bool
		}
		before := map[string]state{}
		for _, m := range macs {
			ip, ok := s.Leased(m)
			before[m.String()] = state{ip, ok}
		}
		var src net.HardwareAddr
		if len(frame) >= 12 {
			src = net.HardwareAddr(bytes.Clone(frame[6:12]))
		}
		in := bytes.Clone(frame)

		out := s.Handle(frame, serverMAC)

		if !bytes.Equal(in, frame) {
			t.Fatal("Handle modified the received frame")
		}
		for _, o := range out {
			d := decodeOut(o)
			if d == nil {
				t.Fatalf("emitted frame does not decode: %x", o)
			}
			if dst := d.eth.DstMAC.String(); dst != src.String() && dst != BroadcastMAC.String() {
				t.Fatalf("emitted frame to %s; the request came from %s", dst, src)
			}
			if d.eth.SrcMAC.String() != serverMAC.String() {
				t.Fatalf("emitted frame from %s", d.eth.SrcMAC)
			}
			if d.arp != nil {
				if net.HardwareAddr(d.arp.DstHwAddress).String() != src.String() {
					t.Fatalf("ARP reply names %s; the request came from %s", net.HardwareAddr(d.arp.DstHwAddress), src)
				}
				continue
			}
			if !d.checksumOK {
				t.Fatalf("emitted frame with wrong checksums: %x", o)
			}
			dst := addrOf(d.ip.DstIP)
			if dst != limitedBroadcast && !s.unicastTarget(dst) {
				t.Fatalf("emitted frame to IP %s", dst)
			}
			if d.msg.ClientHWAddr.String() != src.String() {
				t.Fatalf("reply about %s to a frame from %s", d.msg.ClientHWAddr, src)
			}
		}
		for _, m := range macs {
			if bytes.Equal(m, src) {
				continue
			}
			ip, ok := s.Leased(m)
			if b := before[m.String()]; b.ip != ip || b.ok != ok {
				t.Fatalf("a frame from %s changed %s's lease: %v %v -> %s %v", src, m, b.ip, b.ok, ip, ok)
			}
		}
	})
}
