package vswitch

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

// TestRealPortSecurity runs a private Open vSwitch, plugs two "VMs"
// (network namespaces behind veth pairs whose OVS ends carry the
// external_ids libvirt sets on a vnetN tap) into a managed network, and
// proves the flows with real frames.
func TestRealPortSecurity(t *testing.T) {
	realstack.Require(t, "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl", "ip", "ping")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("/tmp", "kvm-ps-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// Isolated: the stack's own Open vSwitch may hold the root namespace's
	// userspace datapath (see realstack.EnsureOVS).
	o, err := realstack.EnsureIsolatedOVS(ctx, filepath.Join(dir, "ovs"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = o.Stop() })
	s, err := Open(ctx, o.Endpoint, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	kicks := make(chan struct{}, 64)
	s.WatchPorts(func() {
		select {
		case kicks <- struct{}{}:
		default:
		}
	})

	const network = "pstest"
	br := api.BridgeName(network)
	if _, err := s.EnsureNetwork(ctx, network, api.NetworkSpec{Subnet: &api.Subnet{CIDR: "10.77.0.0/24"}}, ""); err != nil {
		t.Fatal(err)
	}
	type vm struct {
		ns, host, guest string
		mac             net.HardwareAddr
		ip              netip.Addr
	}
	vms := []vm{
		{"kvmps-a", "kvmpsa0", "eth0", mustMAC("52:54:00:77:00:05"), netip.MustParseAddr("10.77.0.5")},
		{"kvmps-b", "kvmpsb0", "eth0", mustMAC("52:54:00:77:00:06"), netip.MustParseAddr("10.77.0.6")},
	}
	for _, v := range vms {
		cleanupVM(v.ns)
		t.Cleanup(func() { cleanupVM(v.ns) })
		mustRun(t, "ip", "netns", "add", v.ns)
		// The OVS end lives in the switch's namespace, where vswitchd opens it.
		mustRun(t, "ip", "-n", o.Netns(), "link", "add", v.host, "type", "veth", "peer", "name", v.guest, "netns", v.ns)
		mustRun(t, "ip", "-n", v.ns, "link", "set", v.guest, "address", v.mac.String(), "up")
		mustRun(t, "ip", "-n", v.ns, "addr", "add", v.ip.String()+"/24", "dev", v.guest)
		mustRun(t, "ip", "-n", v.ns, "link", "set", "lo", "up")
		mustRun(t, "ip", "-n", o.Netns(), "link", "set", v.host, "up")
		// What libvirt's <virtualport type='openvswitch'/> writes.
		if out, err := o.Vsctl("--timeout=30", "add-port", br, v.host, "--", "set", "Interface", v.host,
			"external_ids:attached-mac="+v.mac.String(), "external_ids:iface-id="+v.ns,
			"external_ids:vm-id=0b7c5c1e-0000-4000-8000-00000000000"+v.ip.String()[len(v.ip.String())-1:]); err != nil {
			t.Fatalf("add-port: %v: %s", err, out)
		}
	}
	select {
	case <-kicks:
	case <-time.After(5 * time.Second):
		t.Fatal("adding a VM port did not notify the watcher")
	}
	known := map[string]string{}
	for _, v := range vms {
		known[strings.ToUpper(v.mac.String())] = v.ip.String()
	}
	sync := func() (changed bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			pending, changed, err := s.SyncPortSecurity(ctx, network, known)
			if err != nil {
				t.Fatal(err)
			}
			if !pending {
				return changed
			}
			if time.Now().After(deadline) {
				t.Fatal("VM ports never got an ofport")
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	start := time.Now()
	if !sync() {
		t.Fatal("first sync applied nothing")
	}
	t.Logf("port security applied in %v", time.Since(start))
	flows := dumpFlows(t, o.Dir, br)
	if n := strings.Count(flows, "cookie=0x6b766d2d70736563"); n != 16 {
		t.Fatalf("%d port-security flows, want 16:\n%s", n, flows)
	}
	// Converged: a second round dumps and sends nothing.
	applies := s.ofApplies.Load()
	start = time.Now()
	if sync() || s.ofApplies.Load() != applies {
		t.Fatal("a converged bridge was rewritten")
	}
	t.Logf("converged resync (dump + compare) in %v", time.Since(start))

	a, b := vms[0], vms[1]
	rx := openRaw(t, b.ns, b.guest)
	txA := openRaw(t, a.ns, a.guest)
	// delivered sends one UDP frame from a's port and says whether b saw it.
	delivered := func(srcMAC net.HardwareAddr, src netip.Addr, sport uint16) bool {
		t.Helper()
		payload := fmt.Appendf(nil, "probe-%d", time.Now().UnixNano())
		frame := udpFrame(t, srcMAC, b.mac, src, b.ip, sport, 4444, payload)
		return rx.sendAndAwait(t, txA, frame, payload)
	}
	ping := func() bool {
		return exec.Command("ip", "netns", "exec", a.ns, "ping", "-c", "1", "-W", "1", b.ip.String()).Run() == nil
	}

	if !ping() {
		t.Fatal("ping from the right MAC and IP failed")
	}
	if !delivered(a.mac, a.ip, 5000) {
		t.Fatal("UDP from the right MAC and IP was dropped")
	}
	if delivered(mustMAC("52:54:00:77:00:99"), a.ip, 5000) {
		t.Fatal("spoofed source MAC passed")
	}
	if delivered(a.mac, netip.MustParseAddr("10.77.0.99"), 5000) {
		t.Fatal("spoofed source IP passed")
	}
	if delivered(a.mac, a.ip, 67) {
		t.Fatal("a DHCP server reply from a VM port passed")
	}
	// A real stack spoofing its address: ping from an address not its own.
	mustRun(t, "ip", "-n", a.ns, "addr", "add", "10.77.0.99/24", "dev", a.guest)
	if exec.Command("ip", "netns", "exec", a.ns, "ping", "-c", "1", "-W", "1", "-I", "10.77.0.99", b.ip.String()).Run() == nil {
		t.Fatal("ping from a spoofed IP passed")
	}

	// Flows deleted out of band (or a restarted vswitchd) come back.
	if out, err := exec.Command("ovs-ofctl", "del-flows", "unix:"+filepath.Join(o.Dir, br+".mgmt"), "cookie=0x6b766d2d70736563/-1").CombinedOutput(); err != nil {
		t.Fatalf("del-flows: %v: %s", err, out)
	}
	// The datapath keeps its cached decisions until vswitchd revalidates
	// them (well under a second): every change is awaited, then checked.
	eventually := func(cond func() bool) bool {
		for deadline := time.Now().Add(5 * time.Second); ; {
			if cond() {
				return true
			}
			if time.Now().After(deadline) {
				return false
			}
		}
	}
	if !eventually(func() bool { return delivered(a.mac, netip.MustParseAddr("10.77.0.99"), 5000) }) {
		t.Fatal("without flows the bridge should be plain NORMAL")
	}
	if !sync() {
		t.Fatal("reconcile did not restore deleted flows")
	}
	if !eventually(func() bool { return !delivered(a.mac, netip.MustParseAddr("10.77.0.99"), 5000) }) || !delivered(a.mac, a.ip, 5000) {
		t.Fatal("restored flows do not enforce")
	}

	// A port that goes takes its flows with it.
	ofportB := strings.TrimSpace(mustVsctlOVS(t, o, "get", "Interface", b.host, "ofport"))
	mustVsctlOVS(t, o, "del-port", br, b.host)
	sync()
	if flows := dumpFlows(t, o.Dir, br); strings.Contains(flows, "in_port="+ofportB+" ") || strings.Contains(flows, "in_port="+ofportB+",") ||
		strings.Count(flows, "cookie=0x6b766d2d70736563") != 8 {
		t.Fatalf("flows of the deleted port (ofport %s) remain:\n%s", ofportB, flows)
	}

	// port_security = false removes every flow.
	off := false
	n, err := s.EnsureNetwork(ctx, network, api.NetworkSpec{Subnet: &api.Subnet{CIDR: "10.77.0.0/24"}, PortSecurity: &off}, "")
	if err != nil || n.PortSecurity {
		t.Fatalf("%+v %v", n, err)
	}
	if !sync() {
		t.Fatal("turning port security off changed nothing")
	}
	if flows := dumpFlows(t, o.Dir, br); strings.Contains(flows, "cookie=0x6b766d2d70736563") {
		t.Fatalf("flows left with port_security=false:\n%s", flows)
	}
	if !strings.Contains(dumpFlows(t, o.Dir, br), "priority=0 actions=NORMAL") {
		t.Fatal("the bridge's default flow was touched")
	}
}

func mustMAC(s string) net.HardwareAddr {
	hw, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return hw
}

func mustRun(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
}

func mustVsctlOVS(t *testing.T, o *realstack.OVS, args ...string) string {
	t.Helper()
	out, err := o.Vsctl(append([]string{"--timeout=30"}, args...)...)
	if err != nil {
		t.Fatalf("ovs-vsctl %v: %v: %s", args, err, out)
	}
	return out
}

// cleanupVM deletes a "VM" namespace, and with it its veth pair.
func cleanupVM(ns string) {
	_ = exec.Command("ip", "netns", "del", ns).Run()
}

func dumpFlows(t *testing.T, rundir, br string) string {
	t.Helper()
	out, err := exec.Command("ovs-ofctl", "--no-names", "--no-stats", "dump-flows", "unix:"+filepath.Join(rundir, br+".mgmt")).CombinedOutput()
	if err != nil {
		t.Fatalf("dump-flows: %v: %s", err, out)
	}
	return string(out)
}

// rawSock is an AF_PACKET socket on an interface inside a namespace (the
// socket stays in the namespace it was created in).
type rawSock struct {
	fd, ifindex int
}

func openRaw(t *testing.T, ns, ifname string) *rawSock {
	t.Helper()
	type res struct {
		r   *rawSock
		err error
	}
	done := make(chan res, 1)
	go func() {
		// The thread is never unlocked: it exits with the goroutine
		// instead of going back to the pool inside the namespace.
		runtime.LockOSThread()
		f, err := os.Open(filepath.Join("/run/netns", ns))
		if err != nil {
			done <- res{err: err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- res{err: err}
			return
		}
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			done <- res{err: err}
			return
		}
		proto := int(htons16(unix.ETH_P_ALL))
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			done <- res{err: err}
			return
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons16(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			done <- res{err: err}
			return
		}
		tv := unix.Timeval{Usec: 100000}
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		done <- res{r: &rawSock{fd: fd, ifindex: ifi.Index}}
	}()
	r := <-done
	if r.err != nil {
		t.Fatalf("raw socket on %s in %s: %v", ifname, ns, r.err)
	}
	t.Cleanup(func() { unix.Close(r.r.fd) })
	return r.r
}

func htons16(v uint16) uint16 { return v<<8 | v>>8 }

// sendAndAwait sends frame from tx and reports whether r receives a frame
// carrying payload within a second.
func (r *rawSock) sendAndAwait(t *testing.T, tx *rawSock, frame, payload []byte) bool {
	t.Helper()
	to := &unix.SockaddrLinklayer{Ifindex: tx.ifindex, Halen: 6, Protocol: htons16(unix.ETH_P_ALL)}
	copy(to.Addr[:], frame[:6])
	if err := unix.Sendto(tx.fd, frame, 0, to); err != nil {
		t.Fatalf("send: %v", err)
	}
	buf := make([]byte, 65536)
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); {
		n, _, err := unix.Recvfrom(r.fd, buf, 0)
		if err == nil && bytes.Contains(buf[:n], payload) {
			return true
		}
	}
	return false
}

// udpFrame is an Ethernet/IPv4/UDP frame with correct checksums.
func udpFrame(t *testing.T, srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	t.Helper()
	eth := layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	udp := layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	if err := udp.SetNetworkLayerForChecksum(&ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true},
		&eth, &ip, &udp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
