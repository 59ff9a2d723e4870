// Package dhcp is kvm-hostd's DHCP server: one per network with dhcp = true,
// on an OVS internal port of the network's bridge, answering only the MACs
// of this host's VMs (reservations computed from libvirt, not a lease
// database: kvm-hostd keeps no state of its own).
//
// The port never gets an IP address, so the host is not reachable from VM
// networks: the server reads and writes whole Ethernet frames on an
// AF_PACKET socket and answers ARP for its server identifier itself, so
// that unicast renewals reach it.
//
// Several hosts serve one network (each its own VMs, each with its own
// server identifier), so after a VM migrates, its unicast renewal to the
// old host goes unanswered and its broadcast rebind is answered by the new
// host: that is the handover.
package dhcp

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gopacket/gopacket/layers"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	"golang.org/x/sys/unix"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// DefaultLeaseTime is the lease handed out: short enough that a migrated
// VM rebinds to its new host soon, long enough to be no load.
const DefaultLeaseTime = time.Hour

// ErrNoInterface means the server's port does not exist as a network
// interface on this host (an OVSDB with no switch behind it, such as the
// embedded one, or vswitchd has not created it yet).
var ErrNoInterface = errors.New("dhcp: interface does not exist")

// Config is one server's configuration.
type Config struct {
	Interface string
	ServerIP  netip.Addr
	Subnet    api.Subnet
	LeaseTime time.Duration
	// MTU, when set, is sent as the interface MTU option: guests whose NIC
	// does not announce it (non-virtio models) fit an overlay's tunnels.
	MTU int64
	Log *slog.Logger
}

// Server answers DHCP and ARP on one interface.
type Server struct {
	cfg      Config
	prefix   netip.Prefix
	mask     netip.Addr
	bcast    netip.Addr
	router   netip.Addr
	dns      []netip.Addr
	bindings atomic.Pointer[map[string]netip.Addr]

	// leased records, per MAC, the address this server last acknowledged
	// and when that lease ends: what a guest has actually taken, as
	// opposed to what it is offered. In memory only: after a restart a
	// guest shows up again at its next renewal.
	leaseMu sync.Mutex
	leased  map[string]lease

	guestLogs *logLimiter // lines caused by guest frames, per source MAC
	panicLogs *logLimiter // recovered panics (one key)

	// beforeHandle, when set (by tests only), runs before each received
	// frame is handled: a way to make the receive loop meet a panic now
	// that no known input causes one.
	beforeHandle func(frame []byte)

	mu      sync.Mutex
	fd      int
	mac     net.HardwareAddr
	running bool
	done    chan struct{}
}

// New validates cfg; the server does nothing until Start.
func New(cfg Config) (*Server, error) {
	if cfg.LeaseTime <= 0 {
		cfg.LeaseTime = DefaultLeaseTime
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	p, err := api.ParseSubnetCIDR(cfg.Subnet.CIDR)
	if err != nil {
		return nil, err
	}
	if !p.Contains(cfg.ServerIP) {
		return nil, fmt.Errorf("dhcp: server ip %s is outside %s", cfg.ServerIP, p)
	}
	s := &Server{
		cfg: cfg, fd: -1, prefix: p,
		guestLogs: newLogLimiter(guestLogPerMAC, guestLogAll, guestLogMaxMACs),
		panicLogs: newLogLimiter(bucketSpec{burst: 3, every: time.Minute}, bucketSpec{burst: 3, every: time.Minute}, 1),
	}
	m := net.CIDRMask(p.Bits(), 32)
	s.mask = netip.AddrFrom4([4]byte(m))
	base, bits := p.Addr().As4(), uint32(1)<<(32-p.Bits())-1
	v := (uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])) | bits
	s.bcast = netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	if cfg.Subnet.Gateway != "" {
		s.router, _ = netip.ParseAddr(cfg.Subnet.Gateway)
	}
	for _, d := range cfg.Subnet.DNSServers {
		// DHCPv4 carries IPv4 name servers only.
		if a, err := netip.ParseAddr(d); err == nil && a.Unmap().Is4() {
			a = a.Unmap()
			s.dns = append(s.dns, a)
		}
	}
	empty := map[string]netip.Addr{}
	s.bindings.Store(&empty)
	return s, nil
}

// Config returns the server's configuration.
func (s *Server) Config() Config { return s.cfg }

// SetBindings replaces the reservations: MAC (any case) -> address.
// Entries that are not an Ethernet MAC and an IPv4 address are left out:
// the server could not answer for them.
func (s *Server) SetBindings(b map[string]netip.Addr) {
	m := make(map[string]netip.Addr, len(b))
	for mac, ip := range b {
		hw, err := net.ParseMAC(mac)
		if ip = ip.Unmap(); err != nil || len(hw) != 6 || !ip.Is4() {
			s.cfg.Log.Debug("dhcp: reservation ignored", "interface", s.cfg.Interface, "mac", mac, "ip", ip)
			continue
		}
		m[hw.String()] = ip
	}
	s.bindings.Store(&m)
}

// Bindings returns a copy of the reservations.
func (s *Server) Bindings() map[string]netip.Addr { return maps.Clone(*s.bindings.Load()) }

func (s *Server) binding(mac net.HardwareAddr) (netip.Addr, bool) {
	ip, ok := (*s.bindings.Load())[mac.String()]
	return ip, ok
}

type lease struct {
	ip    netip.Addr
	until time.Time
}

// Leased returns the address mac holds by a lease this server acknowledged
// and that has not ended, if that is still its reservation.
func (s *Server) Leased(mac net.HardwareAddr) (netip.Addr, bool) {
	s.leaseMu.Lock()
	l, ok := s.leased[mac.String()]
	s.leaseMu.Unlock()
	if !ok || time.Now().After(l.until) {
		return netip.Addr{}, false
	}
	if ip, ok := s.binding(mac); !ok || ip != l.ip {
		return netip.Addr{}, false
	}
	return l.ip, true
}

func (s *Server) setLeased(mac net.HardwareAddr, ip netip.Addr) {
	s.leaseMu.Lock()
	defer s.leaseMu.Unlock()
	if s.leased == nil {
		s.leased = map[string]lease{}
	}
	if !ip.IsValid() {
		delete(s.leased, mac.String())
		return
	}
	for k, l := range s.leased { // keep the map bounded by live leases
		if time.Now().After(l.until) {
			delete(s.leased, k)
		}
	}
	s.leased[mac.String()] = lease{ip: ip, until: time.Now().Add(s.cfg.LeaseTime)}
}

// Running reports whether the socket is open and served.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Start brings the interface up (with IPv6 off, so it has no link-local
// address either) and serves it until Close. ErrNoInterface when the
// interface does not exist.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running {
		return nil
	}
	if s.fd >= 0 {
		// The previous socket failed (its interface went down or away).
		<-s.done
		unix.Close(s.fd)
		s.fd = -1
	}
	ifi, err := net.InterfaceByName(s.cfg.Interface)
	if err != nil {
		return fmt.Errorf("%w: %s", ErrNoInterface, s.cfg.Interface)
	}
	_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+s.cfg.Interface+"/disable_ipv6", []byte("1"), 0o644)
	if err := linkUp(s.cfg.Interface); err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return fmt.Errorf("dhcp: raw socket on %s: %w", s.cfg.Interface, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("dhcp: bind %s: %w", s.cfg.Interface, err)
	}
	// A receive timeout lets the loop notice Close.
	tv := unix.Timeval{Sec: 0, Usec: 500000}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return err
	}
	s.fd, s.mac, s.running, s.done = fd, ifi.HardwareAddr, true, make(chan struct{})
	go s.serve(rawLink{fd: fd, ifindex: ifi.Index}, s.mac, s.done)
	s.cfg.Log.Info("dhcp server started", "interface", s.cfg.Interface, "server_ip", s.cfg.ServerIP, "mac", s.mac.String())
	return nil
}

func linkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("dhcp: flags of %s: %w", name, err)
	}
	if ifr.Uint16()&unix.IFF_UP != 0 {
		return nil
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("dhcp: bringing %s up: %w", name, err)
	}
	return nil
}

// link is what serve reads frames from and writes them to: the raw socket
// in production, a double in tests.
type link interface {
	// recv reads one frame into buf. outgoing reports a frame the host
	// sent itself (the socket sees those too). A timeout is EAGAIN.
	recv(buf []byte) (n int, outgoing bool, err error)
	send(frame []byte) error
}

type rawLink struct{ fd, ifindex int }

func (l rawLink) recv(buf []byte) (int, bool, error) {
	n, from, err := unix.Recvfrom(l.fd, buf, 0)
	if err != nil {
		return 0, false, err
	}
	ll, ok := from.(*unix.SockaddrLinklayer)
	return n, ok && ll.Pkttype == unix.PACKET_OUTGOING, nil
}

func (l rawLink) send(frame []byte) error {
	to := &unix.SockaddrLinklayer{Ifindex: l.ifindex, Halen: 6, Protocol: htons(unix.ETH_P_ALL)}
	copy(to.Addr[:], frame[:6])
	return unix.Sendto(l.fd, frame, 0, to)
}

func (s *Server) serve(l link, mac net.HardwareAddr, done chan struct{}) {
	defer close(done)
	buf := make([]byte, 65536)
	for {
		n, outgoing, err := l.recv(buf)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				if !s.Running() {
					return
				}
				continue
			}
			// The socket stays open until Close or the next Start.
			if s.Running() {
				s.cfg.Log.Warn("dhcp server stopped: receive failed; restarted at the next resync", "interface", s.cfg.Interface, "error", err)
				s.mu.Lock()
				s.running = false
				s.mu.Unlock()
			}
			return
		}
		if outgoing {
			continue
		}
		for _, out := range s.handleRecovering(buf[:n], mac) {
			if err := l.send(out); err != nil {
				s.guestLog(slog.LevelWarn, out[:6], "dhcp send failed", "error", err)
			}
		}
	}
}

// handleRecovering is handle for the receive loop: every frame comes from
// a guest, and a bug that panics on one must cost that frame, not the
// whole kvm-hostd (every VM's API and every network's DHCP with it). The
// panic is logged, at a bounded rate since a guest can repeat the frame.
func (s *Server) handleRecovering(frame []byte, mac net.HardwareAddr) (out [][]byte) {
	defer func() {
		if r := recover(); r != nil {
			out = nil
			if ok, suppressed := s.panicLogs.allow(""); ok {
				s.cfg.Log.Error("dhcp: panic handling a frame; frame dropped", "interface", s.cfg.Interface,
					"panic", fmt.Sprint(r), "frame_len", len(frame), "suppressed", suppressed, "stack", string(debug.Stack()))
			}
		}
	}()
	if s.beforeHandle != nil {
		s.beforeHandle(frame)
	}
	return s.handle(frame, mac)
}

// Close stops serving and closes the socket.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.fd < 0 {
		s.mu.Unlock()
		return nil
	}
	s.running = false
	fd, done := s.fd, s.done
	s.fd = -1
	s.mu.Unlock()
	<-done
	s.cfg.Log.Info("dhcp server stopped", "interface", s.cfg.Interface)
	return unix.Close(fd)
}

// Handle answers one received frame as the server with MAC mac would; it
// returns the frames to send (none for frames not for it). Exposed for
// tests: it is the whole protocol, without a socket.
func (s *Server) Handle(frame []byte, mac net.HardwareAddr) [][]byte { return s.handle(frame, mac) }

// guestLog logs a line caused by a guest's frame from src, rate-limited per
// src (see logLimiter).
func (s *Server) guestLog(level slog.Level, src net.HardwareAddr, msg string, args ...any) {
	ok, suppressed := s.guestLogs.allow(string(src))
	if !ok {
		return
	}
	args = append([]any{"interface", s.cfg.Interface, "mac", src.String()}, args...)
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	s.cfg.Log.Log(context.Background(), level, msg, args...)
}

// handle validates a frame completely before it acts on it: nothing in it
// changes the server's state or gets an answer unless it is well formed
// and speaks for its own Ethernet source only.
func (s *Server) handle(frame []byte, mac net.HardwareAddr) [][]byte {
	in, err := decodeFrame(frame)
	if err != nil {
		return nil
	}
	if in.arp != nil {
		return s.handleARP(in, mac)
	}
	return s.handleDHCP(in, mac)
}

// handleARP answers ARP requests for the server's address, to the asker
// only: the reply goes to the frame's Ethernet source, and a request whose
// sender hardware address is not that source is ignored, so that no guest
// can have the server's replies (or its MAC) pushed at another VM.
func (s *Server) handleARP(in *inFrame, mac net.HardwareAddr) [][]byte {
	a := in.arp
	if a.Operation != layers.ARPRequest || netip.AddrFrom4([4]byte(a.DstProtAddress)) != s.cfg.ServerIP {
		return nil
	}
	if !bytes.Equal(a.SourceHwAddress, in.src) {
		s.guestLog(slog.LevelWarn, in.src, "arp request ignored: sender hardware address is not the frame's source",
			"sender_mac", net.HardwareAddr(a.SourceHwAddress).String())
		return nil
	}
	out, err := encodeARP(in.src, layers.ARPReply, mac, s.cfg.ServerIP, in.src, netip.AddrFrom4([4]byte(a.SourceProtAddress)))
	if err != nil {
		return nil
	}
	return [][]byte{out}
}

func addrOf(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}
	}
	return a.Unmap()
}

// set reports whether a is an address at all (neither absent nor 0.0.0.0).
func set(a netip.Addr) bool { return a.IsValid() && !a.IsUnspecified() }

func (s *Server) handleDHCP(in *inFrame, mac net.HardwareAddr) [][]byte {
	req := in.msg
	if req.OpCode != dhcpv4.OpcodeBootRequest || req.HWType != iana.HWTypeEthernet {
		return nil
	}
	// chaddr names the client the message is about; only the frame's
	// source can speak for itself, or a guest could take or end another
	// VM's lease.
	if !bytes.Equal(req.ClientHWAddr, in.src) {
		s.guestLog(slog.LevelWarn, in.src, "dhcp message ignored: chaddr is not the frame's source",
			"chaddr", req.ClientHWAddr.String(), "type", req.MessageType().String())
		return nil
	}
	if set(addrOf(req.GatewayIPAddr)) {
		return nil // relayed: not from a VM on this bridge
	}
	ip, ok := s.binding(in.src)
	if !ok {
		// Not one of this host's VMs: another host's server answers it.
		return nil
	}
	ciaddr := addrOf(req.ClientIPAddr)
	sid := addrOf(req.ServerIdentifier())
	xid := "0x" + hex.EncodeToString(req.TransactionID[:])
	var reply *dhcpv4.DHCPv4
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		reply = s.reply(req, dhcpv4.MessageTypeOffer, ip)
		s.guestLog(slog.LevelDebug, in.src, "dhcp offer", "xid", xid, "ip", ip)
	case dhcpv4.MessageTypeRequest:
		if set(sid) && sid != s.cfg.ServerIP {
			return nil // the client chose another server
		}
		want := addrOf(req.RequestedIPAddress())
		if !want.IsValid() {
			want = ciaddr
		}
		if want != ip {
			reply = s.reply(req, dhcpv4.MessageTypeNak, netip.Addr{})
			s.setLeased(in.src, netip.Addr{})
			s.guestLog(slog.LevelInfo, in.src, "dhcp nak", "xid", xid, "requested", want, "reserved", ip)
		} else {
			reply = s.reply(req, dhcpv4.MessageTypeAck, ip)
			s.setLeased(in.src, ip)
			s.guestLog(slog.LevelInfo, in.src, "dhcp ack", "xid", xid, "ip", ip)
		}
	case dhcpv4.MessageTypeInform:
		// RFC 2131 4.3.5: the answer goes unicast to ciaddr, which an
		// INFORMing client must fill in (it has its address already). One
		// without a usable ciaddr is malformed and dropped rather than
		// broadcast to every guest on the network.
		if !s.unicastTarget(ciaddr) {
			s.guestLog(slog.LevelDebug, in.src, "dhcp inform ignored: no usable ciaddr", "xid", xid, "ciaddr", ciaddr)
			return nil
		}
		reply = s.reply(req, dhcpv4.MessageTypeAck, netip.Addr{})
	case dhcpv4.MessageTypeRelease:
		if set(sid) && sid != s.cfg.ServerIP {
			return nil // a lease of another server's
		}
		s.guestLog(slog.LevelInfo, in.src, "dhcp release (the reservation stays)", "xid", xid, "ip", ciaddr)
		s.setLeased(in.src, netip.Addr{})
		return nil
	case dhcpv4.MessageTypeDecline:
		if set(sid) && sid != s.cfg.ServerIP {
			return nil
		}
		s.guestLog(slog.LevelWarn, in.src, "dhcp decline: the guest found its reserved address in use", "xid", xid, "ip", ip)
		return nil
	default:
		return nil
	}
	out, err := s.frame(req, reply, ciaddr, mac)
	if err != nil {
		return nil
	}
	return [][]byte{out}
}

// unicastTarget reports whether a reply may be sent to a as an IP
// destination: a host address of the network's subnet, never an absent,
// unspecified, broadcast or foreign one that a guest wrote into its
// message.
func (s *Server) unicastTarget(a netip.Addr) bool {
	return a.Is4() && s.prefix.Contains(a) && a != s.prefix.Masked().Addr() && a != s.bcast
}

func (s *Server) reply(req *dhcpv4.DHCPv4, typ dhcpv4.MessageType, yiaddr netip.Addr) *dhcpv4.DHCPv4 {
	m := &dhcpv4.DHCPv4{
		OpCode: dhcpv4.OpcodeBootReply, HWType: req.HWType, TransactionID: req.TransactionID, Flags: req.Flags,
		ClientHWAddr: slices.Clone(req.ClientHWAddr),
		ClientIPAddr: net.IPv4zero, YourIPAddr: net.IPv4zero, ServerIPAddr: net.IPv4zero, GatewayIPAddr: net.IPv4zero,
		Options: dhcpv4.OptionsFromList(dhcpv4.OptMessageType(typ), dhcpv4.OptServerIdentifier(s.cfg.ServerIP.AsSlice())),
	}
	if typ == dhcpv4.MessageTypeNak {
		m.UpdateOption(dhcpv4.OptMessage("address not reserved for this client"))
		return m
	}
	if yiaddr.IsValid() {
		m.YourIPAddr = yiaddr.AsSlice()
	}
	m.UpdateOption(dhcpv4.OptSubnetMask(net.IPMask(s.mask.AsSlice())))
	m.UpdateOption(dhcpv4.OptBroadcastAddress(s.bcast.AsSlice()))
	if s.router.Is4() {
		m.UpdateOption(dhcpv4.OptRouter(s.router.AsSlice()))
	}
	if len(s.dns) > 0 {
		ips := make([]net.IP, len(s.dns))
		for i, d := range s.dns {
			ips[i] = d.AsSlice()
		}
		m.UpdateOption(dhcpv4.OptDNS(ips...))
	}
	if s.cfg.MTU >= 68 && s.cfg.MTU <= 65535 {
		m.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionInterfaceMTU, binary.BigEndian.AppendUint16(nil, uint16(s.cfg.MTU))))
	}
	if req.MessageType() == dhcpv4.MessageTypeInform {
		m.ClientIPAddr = slices.Clone(req.ClientIPAddr.To4())
		return m // no lease for INFORM
	}
	m.UpdateOption(dhcpv4.OptIPAddressLeaseTime(s.cfg.LeaseTime))
	m.UpdateOption(dhcpv4.OptRenewTimeValue(s.cfg.LeaseTime / 2))
	m.UpdateOption(dhcpv4.OptRebindingTimeValue(s.cfg.LeaseTime / 8 * 7))
	return m
}

// frame addresses a reply as RFC 2131 4.1 says: broadcast for NAK and when
// the client asks for it, else to the client's address when it has one,
// else to the offered address. The MAC is always the client's own (the
// frame's source, which chaddr was checked to be) or broadcast, and the IP
// destination is always a usable address: where the guest's ciaddr is not
// one, the reply is broadcast.
func (s *Server) frame(req, reply *dhcpv4.DHCPv4, ciaddr netip.Addr, mac net.HardwareAddr) ([]byte, error) {
	dstMAC, dst := BroadcastMAC, limitedBroadcast
	switch {
	case reply.MessageType() == dhcpv4.MessageTypeNak || req.IsBroadcast():
	case set(ciaddr):
		if s.unicastTarget(ciaddr) {
			dstMAC, dst = req.ClientHWAddr, ciaddr
		}
	default:
		if y := addrOf(reply.YourIPAddr); s.unicastTarget(y) {
			dstMAC, dst = req.ClientHWAddr, y
		}
	}
	return encodeUDP(mac, dstMAC, s.cfg.ServerIP, dst, ServerPort, ClientPort, reply.ToBytes())
}
