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
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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
	s := &Server{cfg: cfg, fd: -1}
	m := net.CIDRMask(p.Bits(), 32)
	s.mask = netip.AddrFrom4([4]byte(m))
	base, bits := p.Addr().As4(), uint32(1)<<(32-p.Bits())-1
	v := (uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])) | bits
	s.bcast = netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	if cfg.Subnet.Gateway != "" {
		s.router, _ = netip.ParseAddr(cfg.Subnet.Gateway)
	}
	for _, d := range cfg.Subnet.DNSServers {
		if a, err := netip.ParseAddr(d); err == nil {
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
func (s *Server) SetBindings(b map[string]netip.Addr) {
	m := make(map[string]netip.Addr, len(b))
	for mac, ip := range b {
		m[strings.ToLower(mac)] = ip
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
	go s.serve(fd, ifi.Index, s.mac, s.done)
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

func (s *Server) serve(fd, ifindex int, mac net.HardwareAddr, done chan struct{}) {
	defer close(done)
	buf := make([]byte, 65536)
	for {
		n, from, err := unix.Recvfrom(fd, buf, 0)
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
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		for _, out := range s.handle(buf[:n], mac) {
			to := &unix.SockaddrLinklayer{Ifindex: ifindex, Halen: 6, Protocol: htons(unix.ETH_P_ALL)}
			copy(to.Addr[:], out[:6])
			if err := unix.Sendto(fd, out, 0, to); err != nil {
				s.cfg.Log.Warn("dhcp send failed", "interface", s.cfg.Interface, "error", err)
			}
		}
	}
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

func (s *Server) handle(frame []byte, mac net.HardwareAddr) [][]byte {
	if a, ok := DecodeARP(frame); ok {
		if a.Op != ARPRequest || a.TargetIP != s.cfg.ServerIP {
			return nil
		}
		return [][]byte{EncodeARP(a.SenderMAC, ARP{
			Op: ARPReply, SenderMAC: mac, SenderIP: s.cfg.ServerIP, TargetMAC: a.SenderMAC, TargetIP: a.SenderIP,
		})}
	}
	p, ok := DecodeUDP(frame)
	if !ok || p.DstPort != ServerPort {
		return nil
	}
	req, err := ParseMessage(p.Payload)
	if err != nil || req.Op != opRequest {
		return nil
	}
	if req.GIAddr.IsValid() && !req.GIAddr.IsUnspecified() {
		return nil // relayed: not from a VM on this bridge
	}
	ip, ok := s.binding(req.CHAddr)
	if !ok {
		// Not one of this host's VMs: another host's server answers it.
		return nil
	}
	log := s.cfg.Log.With("interface", s.cfg.Interface, "mac", req.CHAddr.String(), "xid", fmt.Sprintf("%#08x", req.XID))
	var reply *Message
	switch req.Type() {
	case Discover:
		reply = s.reply(req, Offer, ip)
		log.Debug("dhcp offer", "ip", ip)
	case Request:
		if sid, ok := req.OptionAddr(OptServerID); ok && sid != s.cfg.ServerIP {
			return nil // the client chose another server
		}
		want, ok := req.OptionAddr(OptRequestedIP)
		if !ok {
			want = req.CIAddr
		}
		if want != ip {
			reply = s.reply(req, Nak, netip.Addr{})
			s.setLeased(req.CHAddr, netip.Addr{})
			log.Info("dhcp nak", "requested", want, "reserved", ip)
		} else {
			reply = s.reply(req, Ack, ip)
			s.setLeased(req.CHAddr, ip)
			log.Info("dhcp ack", "ip", ip)
		}
	case Inform:
		reply = s.reply(req, Ack, netip.Addr{})
	case Release:
		log.Info("dhcp release (the reservation stays)", "ip", req.CIAddr)
		s.setLeased(req.CHAddr, netip.Addr{})
		return nil
	case Decline:
		log.Warn("dhcp decline: the guest found its reserved address in use", "ip", ip)
		return nil
	default:
		return nil
	}
	return [][]byte{s.frame(req, reply, mac)}
}

func (s *Server) reply(req *Message, typ byte, yiaddr netip.Addr) *Message {
	m := &Message{
		Op: opReply, XID: req.XID, Flags: req.Flags, GIAddr: req.GIAddr, CHAddr: req.CHAddr,
		Options: map[byte][]byte{OptMessageType: {typ}, OptServerID: addrBytes(s.cfg.ServerIP)},
	}
	if typ == Nak {
		m.Options[OptMessage] = []byte("address not reserved for this client")
		return m
	}
	m.YIAddr = yiaddr
	m.SIAddr = netip.IPv4Unspecified()
	m.Options[OptSubnetMask] = addrBytes(s.mask)
	m.Options[OptBroadcast] = addrBytes(s.bcast)
	if s.router.IsValid() {
		m.Options[OptRouter] = addrBytes(s.router)
	}
	if len(s.dns) > 0 {
		m.Options[OptDNS] = addrBytes(s.dns...)
	}
	if s.cfg.MTU >= 68 && s.cfg.MTU <= 65535 {
		m.Options[OptMTU] = binary.BigEndian.AppendUint16(nil, uint16(s.cfg.MTU))
	}
	if req.Type() == Inform {
		m.CIAddr = req.CIAddr
		return m // no lease for INFORM
	}
	lease := uint32(s.cfg.LeaseTime / time.Second)
	m.Options[OptLeaseTime] = uint32Bytes(lease)
	m.Options[OptT1] = uint32Bytes(lease / 2)
	m.Options[OptT2] = uint32Bytes(lease / 8 * 7)
	return m
}

// frame addresses a reply as RFC 2131 4.1 says: to the client's address
// when it has one, broadcast when it asks for it (and for NAK), else to
// the offered address at the client's MAC.
func (s *Server) frame(req, reply *Message, mac net.HardwareAddr) []byte {
	p := UDPPacket{SrcMAC: mac, Src: s.cfg.ServerIP, SrcPort: ServerPort, DstPort: ClientPort, Payload: reply.Marshal()}
	switch {
	case reply.Type() == Nak || req.Broadcast():
		p.DstMAC, p.Dst = BroadcastMAC, netip.AddrFrom4([4]byte{255, 255, 255, 255})
	case req.CIAddr.IsValid() && !req.CIAddr.IsUnspecified():
		p.DstMAC, p.Dst = req.CHAddr, req.CIAddr
	default:
		p.DstMAC, p.Dst = req.CHAddr, reply.YIAddr
	}
	return EncodeUDP(p)
}
