package dhcp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/sys/unix"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

// inNetns runs fn on an OS thread in network namespace netns; the thread
// is never unlocked, so it exits with its goroutine.
func inNetns(netns string, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open(filepath.Join("/run/netns", netns))
		if err != nil {
			done <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("setns %s: %w", netns, err)
			return
		}
		done <- fn()
	}()
	return <-done
}

// testClient is a minimal DHCP client: a raw socket on one interface,
// sending as any MAC.
type testClient struct {
	fd      int
	ifindex int
}

func openTestClient(iface string) (*testClient, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return nil, err
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	tv := unix.Timeval{Usec: 200000}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	return &testClient{fd: fd, ifindex: ifi.Index}, nil
}

func (c *testClient) close() { unix.Close(c.fd) }

func (c *testClient) send(frame []byte) error {
	to := &unix.SockaddrLinklayer{Ifindex: c.ifindex, Halen: 6, Protocol: htons(unix.ETH_P_ALL)}
	copy(to.Addr[:], frame[:6])
	return unix.Sendto(c.fd, frame, 0, to)
}

// await reads frames until match accepts one or wait passes.
func (c *testClient) await(wait time.Duration, match func([]byte) bool) bool {
	buf := make([]byte, 65536)
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		n, from, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			continue
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if match(buf[:n]) {
			return true
		}
	}
	return false
}

// exchange sends a client message from mac and waits for the server's
// reply to it (same xid).
func (c *testClient) exchange(mac net.HardwareAddr, typ dhcpv4.MessageType, bcast bool, opts []dhcpv4.Option, wait time.Duration) (*dhcpv4.DHCPv4, error) {
	m := clientMsg(mac, typ, netip.Addr{}, opts...)
	binary.BigEndian.PutUint32(m.TransactionID[:], rand.Uint32())
	if bcast {
		m.SetBroadcast()
	}
	if err := c.send(msgFrame(mac, m)); err != nil {
		return nil, err
	}
	var reply *dhcpv4.DHCPv4
	c.await(wait, func(f []byte) bool {
		d := decodeOut(f)
		if d == nil || d.msg == nil || d.udp.DstPort != ClientPort {
			return false
		}
		if r := d.msg; r.TransactionID == m.TransactionID && r.OpCode == dhcpv4.OpcodeBootReply {
			reply = r
			return true
		}
		return false
	})
	if reply == nil {
		return nil, errNoReply
	}
	return reply, nil
}

// send1 sends a client message from mac (to the broadcast address unless
// dstMAC/dst are given) and returns every reply to it within wait.
func (c *testClient) send1(mac net.HardwareAddr, typ dhcpv4.MessageType, ciaddr netip.Addr, dstMAC net.HardwareAddr, dst netip.Addr,
	opts []dhcpv4.Option, wait time.Duration) ([]*dhcpv4.DHCPv4, error) {
	m := clientMsg(mac, typ, ciaddr, opts...)
	binary.BigEndian.PutUint32(m.TransactionID[:], rand.Uint32())
	src := netip.IPv4Unspecified()
	if ciaddr.IsValid() {
		src = ciaddr
	}
	if dstMAC == nil {
		dstMAC, dst = BroadcastMAC, limitedBroadcast
	}
	frame, err := encodeUDP(mac, dstMAC, src, dst, ClientPort, ServerPort, m.ToBytes())
	if err != nil {
		return nil, err
	}
	if err := c.send(frame); err != nil {
		return nil, err
	}
	var replies []*dhcpv4.DHCPv4
	c.await(wait, func(f []byte) bool {
		d := decodeOut(f)
		if d == nil || d.msg == nil || d.udp.DstPort != ClientPort {
			return false
		}
		if r := d.msg; r.TransactionID == m.TransactionID && r.OpCode == dhcpv4.OpcodeBootReply {
			replies = append(replies, r)
		}
		return false // keep collecting until wait
	})
	return replies, nil
}

func serverOf(m *dhcpv4.DHCPv4) string { return optAddr(m, dhcpv4.OptionServerIdentifier).String() }

// arpReplyFrom decodes f as an ARP reply; ok false if it is not one.
func arpReplyFrom(f []byte) (senderMAC net.HardwareAddr, senderIP netip.Addr, ok bool) {
	d := decodeOut(f)
	if d == nil || d.arp == nil || d.arp.Operation != 2 {
		return nil, netip.Addr{}, false
	}
	return net.HardwareAddr(d.arp.SourceHwAddress), addrOf(d.arp.SourceProtAddress), true
}

var errNoReply = errors.New("no reply")

// DHCPResyncForTest is kvm-hostd's resync period (service.DHCPResync).
const DHCPResyncForTest = 10 * time.Second

// TestRealDHCPServer runs kvm-hostd on a namespace host with its own Open
// vSwitch (and libvirt's test driver: the reservation comes from a VM
// defined through kvm-hostd; no guest runs) and talks DHCP to it from an
// OVS port on the network, the way a VM's NIC would.
func TestRealDHCPServer(t *testing.T) {
	realstack.Require(t, "ovs-vsctl", "ovsdb-server", "ovs-vswitchd", "libvirtd", "nsenter", "ip")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	start := time.Now()
	hs := realstack.StartHostNamespaces(ctx, t, realstack.HostsOptions{Names: []string{"d"}, OVS: true})
	h := hs.Host("d")
	run := func(name string, args ...string) (string, error) {
		out, err := h.Command(name, args...).CombinedOutput()
		if err != nil {
			return string(out), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return string(out), nil
	}
	c := harness.Start(t, harness.Options{
		Hosts:         []string{"host-d"},
		LibvirtURI:    "test:///default",
		ListenIPs:     map[string]string{"host-d": h.IP},
		ExtraHostArgs: map[string][]string{"host-d": {"--ovsdb", h.OVS.Endpoint}},
		Wrap:          func(_ string, argv []string) *exec.Cmd { return h.Command(argv[0], argv[1:]...) },
	})
	cl, err := client.New(client.Options{Endpoint: c.Host("host-d").URL, Token: c.Token})
	if err != nil {
		t.Fatal(err)
	}

	const network, vlan = "dh", 10
	serverIP := netip.MustParseAddr("10.50.0.254")
	spec := api.NetworkSpec{VLAN: vlan, DHCP: true, DHCPServerIP: serverIP.String(),
		Subnet: &api.Subnet{CIDR: "10.50.0.0/24", Gateway: "10.50.0.1", DNSServers: []string{"10.50.0.1", "10.50.0.2"}}}
	if _, err := cl.PutNetwork(ctx, network, spec); err != nil {
		t.Fatal(err)
	}
	port := api.DHCPPortName(network)
	// The server is up: its port exists as an interface, is up, and has
	// no address at all (no IPv4, and IPv6 is off, so no link-local).
	if !harness.Wait(ctx, 20*time.Second, func() bool { return strings.Contains(c.Host("host-d").Log(), "dhcp server started") }) {
		t.Fatalf("the DHCP server did not start:\n%s", c.Host("host-d").Log())
	}
	if out, err := run("ip", "-o", "addr", "show", "dev", port); err != nil || strings.Contains(out, "inet") {
		t.Fatalf("the DHCP port %s has an address (%v):\n%s", port, err, out)
	}
	t.Logf("DHCP server up on %s after %s", port, time.Since(start).Round(time.Millisecond))

	// A VM on the network gives this host a reservation.
	vmMAC, _ := net.ParseMAC("52:54:00:d0:0d:01")
	strayMAC, _ := net.ParseMAC("52:54:00:d0:0d:02")
	if _, err := cl.PutVM(ctx, "dvm", api.VMSpec{VCPU: 1, MemoryMiB: 64, Running: false,
		Interfaces: []api.VMInterface{{Network: network, MAC: vmMAC.String()}}}); err != nil {
		t.Fatal(err)
	}
	n, err := cl.GetNetwork(ctx, network)
	if err != nil {
		t.Fatal(err)
	}
	if len(n.Leases) != 1 || n.Leases[0].MAC != vmMAC.String() {
		t.Fatalf("leases %+v, want one for %s", n.Leases, vmMAC)
	}
	want := netip.MustParseAddr(n.Leases[0].IP)

	// The "NIC": an OVS internal port on the bridge, tagged like a VM's.
	if _, err := h.OVS.Vsctl("--timeout=30", "add-port", api.BridgeName(network), "dc0", fmt.Sprintf("tag=%d", vlan), "--",
		"set", "Interface", "dc0", "type=internal", "--",
		"set", "Port", "dc0", "external_ids:kvm-hostd-owned=true", "external_ids:kvm-network="+network); err != nil {
		t.Fatal(err)
	}
	if !harness.Wait(ctx, 10*time.Second, func() bool {
		_, err := run("ip", "link", "set", "dc0", "address", vmMAC.String(), "up")
		return err == nil
	}) {
		t.Fatal("port dc0 did not appear")
	}

	err = inNetns(h.Netns, func() error {
		tc, err := openTestClient("dc0")
		if err != nil {
			return err
		}
		defer tc.close()
		// The server may still be picking up the VM (resync on change).
		var offer *dhcpv4.DHCPv4
		if !harness.Wait(ctx, 15*time.Second, func() bool {
			offer, err = tc.exchange(vmMAC, dhcpv4.MessageTypeDiscover, false, nil, time.Second)
			return err == nil
		}) {
			return fmt.Errorf("DISCOVER from the VM's MAC: %v", err)
		}
		if offer.MessageType() != dhcpv4.MessageTypeOffer || addrOf(offer.YourIPAddr) != want {
			return fmt.Errorf("offer: type %s address %s, want OFFER of %s", offer.MessageType(), offer.YourIPAddr, want)
		}
		mask := optAddr(offer, dhcpv4.OptionSubnetMask)
		router := optAddr(offer, dhcpv4.OptionRouter)
		sid := optAddr(offer, dhcpv4.OptionServerIdentifier)
		lease, _ := optUint32(offer, dhcpv4.OptionIPAddressLeaseTime)
		dns := optAddrs(offer, dhcpv4.OptionDomainNameServer)
		if mask.String() != "255.255.255.0" || router.String() != "10.50.0.1" || sid != serverIP || lease != 3600 ||
			!slices.Equal(dns, []netip.Addr{netip.MustParseAddr("10.50.0.1"), netip.MustParseAddr("10.50.0.2")}) {
			return fmt.Errorf("offer options: mask %s router %s server %s lease %d dns %v", mask, router, sid, lease, dns)
		}
		ack, err := tc.exchange(vmMAC, dhcpv4.MessageTypeRequest, false, []dhcpv4.Option{
			addrOpt(dhcpv4.OptionRequestedIPAddress, want.String()), addrOpt(dhcpv4.OptionServerIdentifier, serverIP.String())}, 3*time.Second)
		if err != nil || ack.MessageType() != dhcpv4.MessageTypeAck || addrOf(ack.YourIPAddr) != want {
			return fmt.Errorf("REQUEST: %v %+v", err, ack)
		}
		t.Logf("DISCOVER/OFFER/REQUEST/ACK: %s got %s (mask %s, router %s, dns %v, server %s)", vmMAC, want, mask, router, dns, sid)
		nak, err := tc.exchange(vmMAC, dhcpv4.MessageTypeRequest, true, []dhcpv4.Option{addrOpt(dhcpv4.OptionRequestedIPAddress, "10.50.0.77")}, 3*time.Second)
		if err != nil || nak.MessageType() != dhcpv4.MessageTypeNak {
			return fmt.Errorf("REQUEST for an address that is not the VM's: %v %+v, want NAK", err, nak)
		}

		// ARP for the server's address is answered by the server's port.
		srvPort, err := net.InterfaceByName(port)
		if err != nil {
			return err
		}
		if err := tc.send(arpRequest(vmMAC, vmMAC, want, serverIP)); err != nil {
			return err
		}
		if !tc.await(3*time.Second, func(f []byte) bool {
			smac, sip, ok := arpReplyFrom(f)
			return ok && sip == serverIP && smac.String() == srvPort.HardwareAddr.String()
		}) {
			return fmt.Errorf("no ARP reply for %s from %s", serverIP, srvPort.HardwareAddr)
		}

		// A MAC with no VM here gets no answer (broadcast: it would see one).
		if r, err := tc.exchange(strayMAC, dhcpv4.MessageTypeDiscover, true, nil, 3*time.Second); !errors.Is(err, errNoReply) {
			return fmt.Errorf("a MAC without a VM got an answer: %+v %v", r, err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, c.Host("host-d").Log())
	}

	// The port taken down out of band: the server notices and the next
	// resync brings it back up and serves again.
	if _, err := run("ip", "link", "set", port, "down"); err != nil {
		t.Fatal(err)
	}
	downAt := time.Now()
	err = inNetns(h.Netns, func() error {
		tc, err := openTestClient("dc0")
		if err != nil {
			return err
		}
		defer tc.close()
		if !harness.Wait(ctx, 2*DHCPResyncForTest, func() bool {
			r, err := tc.exchange(vmMAC, dhcpv4.MessageTypeDiscover, false, nil, time.Second)
			return err == nil && addrOf(r.YourIPAddr) == want
		}) {
			return errors.New("no DHCP answer after the port was taken down and the resync passed")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, c.Host("host-d").Log())
	}
	t.Logf("serving again %s after the port went down", time.Since(downAt).Round(time.Millisecond))

	// After the VM is deleted, its MAC gets no answer either.
	if err := cl.DeleteVM(ctx, "dvm", 0); err != nil {
		t.Fatal(err)
	}
	err = inNetns(h.Netns, func() error {
		tc, err := openTestClient("dc0")
		if err != nil {
			return err
		}
		defer tc.close()
		if !harness.Wait(ctx, 15*time.Second, func() bool {
			_, err := tc.exchange(vmMAC, dhcpv4.MessageTypeDiscover, true, nil, 2*time.Second)
			return errors.Is(err, errNoReply)
		}) {
			return errors.New("the deleted VM's MAC is still answered")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.DeleteNetwork(ctx, network); err != nil {
		t.Fatal(err)
	}
	if _, err := run("ip", "link", "show", port); err == nil {
		t.Fatalf("DHCP port %s still exists after the network was deleted", port)
	}
	t.Logf("total %s", time.Since(start).Round(time.Millisecond))
}

// TestRealDHCPHandover: one DHCP network on two namespace hosts (each with
// its own Open vSwitch), joined through an uplink on each host cabled to
// one switch. A VM's NIC is played by a port on host b; the VM itself is
// defined on host a, then "migrates" to host b (deleted on a, defined on
// b: the test driver cannot migrate, and the DHCP side only sees where the
// VM is). Before the move only host a answers, across the uplink; after
// it, host a stays silent (also to a unicast renewal sent to its server
// address) and host b answers the broadcast rebind with the same address.
func TestRealDHCPHandover(t *testing.T) {
	realstack.Require(t, "ovs-vsctl", "ovsdb-server", "ovs-vswitchd", "libvirtd", "nsenter", "ip")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	start := time.Now()
	hs := realstack.StartHostNamespaces(ctx, t, realstack.HostsOptions{Names: []string{"a", "b"}, OVS: true})
	const sw = "kvmtup1"
	root := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	_ = exec.Command("ip", "link", "del", sw).Run() // left by a crashed run
	root("link", "add", sw, "type", "bridge")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", sw).Run() })
	root("link", "set", sw, "up")
	names := []string{"host-a", "host-b"}
	ns := map[string]*realstack.NSHost{"host-a": hs.Host("a"), "host-b": hs.Host("b")}
	opts := harness.Options{Hosts: names, LibvirtURI: "test:///default", ListenIPs: map[string]string{}, ExtraHostArgs: map[string][]string{},
		Wrap: func(host string, argv []string) *exec.Cmd { return ns[host].Command(argv[0], argv[1:]...) }}
	for _, hn := range names {
		h := ns[hn]
		root("link", "add", "kvmu-"+h.Key, "type", "veth", "peer", "name", "up0", "netns", h.Netns)
		root("link", "set", "kvmu-"+h.Key, "master", sw)
		root("link", "set", "kvmu-"+h.Key, "up")
		if out, err := h.Command("ip", "link", "set", "up0", "up").CombinedOutput(); err != nil {
			t.Fatalf("%s: %v %s", hn, err, out)
		}
		opts.ListenIPs[hn] = h.IP
		opts.ExtraHostArgs[hn] = []string{"--ovsdb", h.OVS.Endpoint}
	}
	t.Logf("namespace hosts and uplink cables up after %s", time.Since(start).Round(time.Millisecond))
	c := harness.Start(t, opts)
	t.Logf("kvm-hostd up after %s", time.Since(start).Round(time.Millisecond))
	cls := map[string]*client.Client{}
	for _, hn := range names {
		var err error
		if cls[hn], err = client.New(client.Options{Endpoint: c.Host(hn).URL, Token: c.Token}); err != nil {
			t.Fatal(err)
		}
	}

	const network, vlan = "ho", 30
	sub := api.Subnet{CIDR: "10.60.0.0/24", Gateway: "10.60.0.1"}
	serverIPs, err := api.DHCPServerIPs(sub, names)
	if err != nil {
		t.Fatal(err)
	}
	for _, hn := range names {
		if _, err := cls[hn].PutNetwork(ctx, network, api.NetworkSpec{VLAN: vlan, Subnet: &sub, DHCP: true,
			DHCPServerIP: serverIPs[hn], Uplink: "up0"}); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("networks up after %s", time.Since(start).Round(time.Millisecond))
	mac, _ := net.ParseMAC("52:54:00:0a:0b:0c")
	vm := api.VMSpec{VCPU: 1, MemoryMiB: 64, Interfaces: []api.VMInterface{{Network: network, MAC: mac.String()}}}
	if _, err := cls["host-a"].PutVM(ctx, "mover", vm); err != nil {
		t.Fatal(err)
	}
	n, err := cls["host-a"].GetNetwork(ctx, network)
	if err != nil || len(n.Leases) != 1 {
		t.Fatalf("host-a leases: %v %+v", err, n)
	}
	want := netip.MustParseAddr(n.Leases[0].IP)

	// The VM's NIC, on host b.
	b := ns["host-b"]
	if _, err := b.OVS.Vsctl("--timeout=30", "add-port", api.BridgeName(network), "dc0", fmt.Sprintf("tag=%d", vlan), "--",
		"set", "Interface", "dc0", "type=internal", "--",
		"set", "Port", "dc0", "external_ids:kvm-hostd-owned=true", "external_ids:kvm-network="+network); err != nil {
		t.Fatal(err)
	}
	if !harness.Wait(ctx, 10*time.Second, func() bool {
		return b.Command("ip", "link", "set", "dc0", "address", mac.String(), "up").Run() == nil
	}) {
		t.Fatal("port dc0 did not appear")
	}

	err = inNetns(b.Netns, func() error {
		tc, err := openTestClient("dc0")
		if err != nil {
			return err
		}
		defer tc.close()
		// Before the move: host a answers across the uplink, host b not.
		var offers []*dhcpv4.DHCPv4
		if !harness.Wait(ctx, 20*time.Second, func() bool {
			offers, err = tc.send1(mac, dhcpv4.MessageTypeDiscover, netip.Addr{}, nil, netip.Addr{}, nil, 2*time.Second)
			return err == nil && len(offers) > 0
		}) {
			return fmt.Errorf("no offer before the move (%v)", err)
		}
		t.Logf("first offer after %s", time.Since(start).Round(time.Millisecond))
		if len(offers) != 1 || serverOf(offers[0]) != serverIPs["host-a"] || addrOf(offers[0].YourIPAddr) != want {
			return fmt.Errorf("before the move: %d offers, first from %s of %s; want one from host-a (%s) of %s",
				len(offers), serverOf(offers[0]), offers[0].YourIPAddr, serverIPs["host-a"], want)
		}
		t.Logf("before the move: offer of %s from host-a's server %s, across the uplink", want, serverIPs["host-a"])
		aMAC := net.HardwareAddr(nil)
		if err := tc.send(arpRequest(mac, mac, want, netip.MustParseAddr(serverIPs["host-a"]))); err != nil {
			return err
		}
		tc.await(3*time.Second, func(f []byte) bool {
			smac, sip, ok := arpReplyFrom(f)
			if ok && sip.String() == serverIPs["host-a"] {
				aMAC = smac
				return true
			}
			return false
		})
		if aMAC == nil {
			return fmt.Errorf("no ARP reply for host-a's server %s", serverIPs["host-a"])
		}

		// The move.
		if err := cls["host-a"].DeleteVM(ctx, "mover", 0); err != nil {
			return err
		}
		if _, err := cls["host-b"].PutVM(ctx, "mover", vm); err != nil {
			return err
		}
		moved := time.Now()
		// A renewal unicast to the old server goes unanswered ...
		if !harness.Wait(ctx, 20*time.Second, func() bool {
			r, err := tc.send1(mac, dhcpv4.MessageTypeRequest, want, aMAC, netip.MustParseAddr(serverIPs["host-a"]), nil, 2*time.Second)
			return err == nil && len(r) == 0
		}) {
			return errors.New("host-a still answers the renewal after the VM left it")
		}
		// ... and the broadcast rebind is answered by host b, same address.
		var acks []*dhcpv4.DHCPv4
		if !harness.Wait(ctx, 20*time.Second, func() bool {
			acks, err = tc.send1(mac, dhcpv4.MessageTypeRequest, want, nil, netip.Addr{}, nil, 2*time.Second)
			return err == nil && len(acks) > 0
		}) {
			return fmt.Errorf("no answer to the rebind after the move (%v)", err)
		}
		if len(acks) != 1 || acks[0].MessageType() != dhcpv4.MessageTypeAck || serverOf(acks[0]) != serverIPs["host-b"] || addrOf(acks[0].YourIPAddr) != want {
			return fmt.Errorf("after the move: %d replies, first type %s from %s of %s; want one ACK from host-b (%s) of %s",
				len(acks), acks[0].MessageType(), serverOf(acks[0]), acks[0].YourIPAddr, serverIPs["host-b"], want)
		}
		t.Logf("after the move: renewal to host-a unanswered, rebind ACKed by host-b's server %s with %s, %s after the move",
			serverIPs["host-b"], want, time.Since(moved).Round(time.Millisecond))
		return nil
	})
	if err != nil {
		t.Fatalf("%v\nhost-a:\n%s\nhost-b:\n%s", err, c.Host("host-a").Log(), c.Host("host-b").Log())
	}
	if err := cls["host-b"].DeleteVM(ctx, "mover", 0); err != nil {
		t.Fatal(err)
	}
	for _, hn := range names {
		if err := cls[hn].DeleteNetwork(ctx, network); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("total %s", time.Since(start).Round(time.Millisecond))
}
