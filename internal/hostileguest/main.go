// Command kvm-hostile-guest runs inside a test guest and plays the tenant
// who attacks the host: it forges DHCP frames at the host's DHCP server,
// replaces qemu-guest-agent with an agent that answers with poisoned data,
// and writes terminal escape sequences to the serial console. The real-guest
// tests copy it into the guest through the guest agent and prove that
// kvm-hostd neither crashes nor reports what the guest made up.
//
// It is a test tool: built static (CGO_ENABLED=0) for the guest, never
// shipped.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kvm-hostile-guest dhcp|renew|agent|console [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "dhcp":
		err = dhcpCmd(os.Args[2:])
	case "renew":
		err = renewCmd(os.Args[2:])
	case "agent":
		err = agentCmd(os.Args[2:])
	case "console":
		err = consoleCmd(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kvm-hostile-guest:", err)
		os.Exit(1)
	}
}

// link is the guest's first non-loopback NIC with an AF_PACKET socket on
// it: it sends whole frames, with any source MAC the attacker likes, and
// sees every frame that arrives.
type link struct {
	ifc *net.Interface
	fd  int
}

// nic is the guest's first non-loopback interface with a MAC.
func nic() (*net.Interface, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	for i := range ifs {
		if ifs[i].Flags&net.FlagLoopback == 0 && len(ifs[i].HardwareAddr) == 6 {
			return &ifs[i], nil
		}
	}
	return nil, errors.New("no network interface")
}

// nicIPv4 is the last IPv4 address of ifc, nil when it has none.
func nicIPv4(ifc *net.Interface) net.IP {
	var ip net.IP
	if as, err := ifc.Addrs(); err == nil {
		for _, a := range as {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
				ip = n.IP.To4()
			}
		}
	}
	return ip
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func openLink() (*link, error) {
	ifc, err := nic()
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return nil, err
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifc.Index}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	tv := unix.Timeval{Usec: 200000}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &link{ifc: ifc, fd: fd}, nil
}

func (l *link) Close() error { return unix.Close(l.fd) }

// sendDHCP sends m from a DHCP client's port in an Ethernet frame from src,
// with IPv4 source ciaddr (0.0.0.0 when unset) to the broadcast address.
func (l *link) sendDHCP(src net.HardwareAddr, m *dhcpv4.DHCPv4) error {
	srcIP := net.IPv4zero
	if m.ClientIPAddr != nil && !m.ClientIPAddr.IsUnspecified() {
		srcIP = m.ClientIPAddr
	}
	eth := layers.Ethernet{SrcMAC: src, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeIPv4}
	ip := layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: srcIP.To4(), DstIP: net.IPv4bcast.To4()}
	udp := layers.UDP{SrcPort: 68, DstPort: 67}
	if err := udp.SetNetworkLayerForChecksum(&ip); err != nil {
		return err
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}
	if err := gopacket.SerializeLayers(buf, opts, &eth, &ip, &udp, gopacket.Payload(m.ToBytes())); err != nil {
		return err
	}
	to := &unix.SockaddrLinklayer{Ifindex: l.ifc.Index, Halen: 6, Protocol: htons(unix.ETH_P_ALL)}
	copy(to.Addr[:], layers.EthernetBroadcast)
	return unix.Sendto(l.fd, buf.Bytes(), 0, to)
}

// awaitReply returns the first DHCP reply to xid within d, or nil.
func (l *link) awaitReply(xid dhcpv4.TransactionID, d time.Duration) *dhcpv4.DHCPv4 {
	buf := make([]byte, 65536)
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		n, _, err := unix.Recvfrom(l.fd, buf, 0)
		if err != nil {
			continue
		}
		p := gopacket.NewPacket(buf[:n], layers.LayerTypeEthernet, gopacket.Default)
		u, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if !ok || u.SrcPort != 67 || u.DstPort != 68 {
			continue
		}
		m, err := dhcpv4.FromBytes(u.Payload)
		if err != nil || m.OpCode != dhcpv4.OpcodeBootReply || m.TransactionID != xid {
			continue
		}
		return m
	}
	return nil
}

// dhcpCmd sends one crafted DHCP message and prints the reply, if any:
// "reply TYPE YIADDR" or "no reply".
func dhcpCmd(args []string) error {
	fs := flag.NewFlagSet("dhcp", flag.ExitOnError)
	typ := fs.String("type", "inform", "discover|request|release|decline|inform")
	chaddr := fs.String("chaddr", "", "client hardware address in the message (default: the NIC's)")
	src := fs.String("src", "", "Ethernet source of the frame (default: the NIC's MAC)")
	ciaddr := fs.String("ciaddr", "0.0.0.0", "client IP address field")
	requested := fs.String("requested", "", "requested IP address option")
	server := fs.String("server", "", "server identifier option")
	broadcast := fs.Bool("broadcast", false, "set the broadcast flag")
	wait := fs.Duration("wait", 3*time.Second, "how long to wait for a reply")
	_ = fs.Parse(args)

	l, err := openLink()
	if err != nil {
		return err
	}
	defer l.Close()
	hw, srcMAC := l.ifc.HardwareAddr, l.ifc.HardwareAddr
	if *chaddr != "" {
		if hw, err = net.ParseMAC(*chaddr); err != nil {
			return err
		}
	}
	if *src != "" {
		if srcMAC, err = net.ParseMAC(*src); err != nil {
			return err
		}
	}
	types := map[string]dhcpv4.MessageType{
		"discover": dhcpv4.MessageTypeDiscover, "request": dhcpv4.MessageTypeRequest,
		"release": dhcpv4.MessageTypeRelease, "decline": dhcpv4.MessageTypeDecline,
		"inform": dhcpv4.MessageTypeInform,
	}
	mt, ok := types[*typ]
	if !ok {
		return fmt.Errorf("unknown message type %q", *typ)
	}
	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(mt), dhcpv4.WithHwAddr(hw), dhcpv4.WithBroadcast(*broadcast),
		dhcpv4.WithClientIP(net.ParseIP(*ciaddr)),
	}
	if *requested != "" {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP(*requested))))
	}
	if *server != "" {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP(*server))))
	}
	m, err := dhcpv4.New(mods...)
	if err != nil {
		return err
	}
	if err := l.sendDHCP(srcMAC, m); err != nil {
		return err
	}
	if r := l.awaitReply(m.TransactionID, *wait); r != nil {
		fmt.Printf("reply %s %s\n", strings.ToLower(r.MessageType().String()), r.YourIPAddr)
		return nil
	}
	fmt.Println("no reply")
	return nil
}

// renewCmd takes a lease as the guest itself (DISCOVER, OFFER, REQUEST,
// ACK) and prints "ack IP": the attacker's own service still works.
func renewCmd(args []string) error {
	fs := flag.NewFlagSet("renew", flag.ExitOnError)
	wait := fs.Duration("wait", 5*time.Second, "how long to wait for each reply")
	_ = fs.Parse(args)
	l, err := openLink()
	if err != nil {
		return err
	}
	defer l.Close()
	disc, err := dhcpv4.NewDiscovery(l.ifc.HardwareAddr, dhcpv4.WithBroadcast(true))
	if err != nil {
		return err
	}
	if err := l.sendDHCP(l.ifc.HardwareAddr, disc); err != nil {
		return err
	}
	offer := l.awaitReply(disc.TransactionID, *wait)
	if offer == nil || offer.MessageType() != dhcpv4.MessageTypeOffer {
		return errors.New("no offer")
	}
	req, err := dhcpv4.NewRequestFromOffer(offer, dhcpv4.WithBroadcast(true))
	if err != nil {
		return err
	}
	if err := l.sendDHCP(l.ifc.HardwareAddr, req); err != nil {
		return err
	}
	ack := l.awaitReply(req.TransactionID, *wait)
	if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
		return fmt.Errorf("no ack (got %v)", ack)
	}
	fmt.Printf("ack %s\n", ack.YourIPAddr)
	return nil
}

// ConsolePayload is what consoleCmd writes: an OSC 52 clipboard write, a
// screen clear, colours, BEL, NUL, a C1 CSI, a carriage return that would
// overwrite the line, and invalid UTF-8.
const ConsolePayload = "hostile console: \x1b]52;c;aG9zdGlsZQ==\x07\x1b[2J\x1b[31mred\x1b[0m\x07\x00\xc2\x9b31m\x9b\rover\xff\xfe written\n"

// consoleCmd writes ConsolePayload to the serial console.
func consoleCmd(args []string) error {
	fs := flag.NewFlagSet("console", flag.ExitOnError)
	dev := fs.String("dev", "/dev/ttyS0", "console device")
	n := fs.Int("n", 3, "how many times")
	_ = fs.Parse(args)
	f, err := os.OpenFile(*dev, os.O_WRONLY|unix.O_NOCTTY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// Raw output: no newline translation by the tty, so the bytes reach the
	// host as written.
	_ = exec.Command("stty", "-F", *dev, "raw").Run()
	_, err = f.Write(bytes.Repeat([]byte(ConsolePayload), *n))
	return err
}
