package dhcp

import (
	"bytes"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/sys/unix"
)

// chanLink is a link whose received frames come from in and whose sent
// frames go to out.
type chanLink struct {
	in  chan []byte
	out chan []byte
}

func (l *chanLink) recv(buf []byte) (int, bool, error) {
	select {
	case f := <-l.in:
		return copy(buf, f), false, nil
	case <-time.After(20 * time.Millisecond):
		return 0, false, unix.EAGAIN
	}
}

func (l *chanLink) send(f []byte) error { l.out <- bytes.Clone(f); return nil }

// lockedBuffer collects log output from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}
func (b *lockedBuffer) String() string { b.mu.Lock(); defer b.mu.Unlock(); return b.b.String() }

// TestServeSurvivesPanic: a panic while handling one frame costs that
// frame only; the receive loop goes on and answers the next one, and the
// panic is logged. No known input panics, so the test injects one.
func TestServeSurvivesPanic(t *testing.T) {
	s := testServer(t)
	var logs lockedBuffer
	s.cfg.Log = slog.New(slog.NewTextHandler(&logs, nil))
	poison := []byte("poison frame")
	s.beforeHandle = func(f []byte) {
		if bytes.Equal(f, poison) {
			panic("injected fault")
		}
	}
	l := &chanLink{in: make(chan []byte, 8), out: make(chan []byte, 8)}
	done := make(chan struct{})
	s.mu.Lock()
	s.running = true
	s.mu.Unlock()
	go s.serve(l, serverMAC, done)
	defer func() {
		s.mu.Lock()
		s.running = false
		s.mu.Unlock()
		<-done
	}()

	for range 5 { // more than the panic log's burst: logged, bounded
		l.in <- poison
	}
	l.in <- clientFrame(vmMAC, dhcpv4.MessageTypeDiscover, netip.Addr{})
	select {
	case f := <-l.out:
		if d := decodeOut(f); d == nil || d.msg == nil || d.msg.MessageType() != dhcpv4.MessageTypeOffer {
			t.Fatalf("answer after the panics is not an OFFER: %x", f)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no answer after a frame whose handling panicked")
	}
	select {
	case <-done:
		t.Fatal("the receive loop ended")
	default:
	}
	if n := strings.Count(logs.String(), "injected fault"); n < 1 || n > 3 {
		t.Fatalf("panic logged %d times for 5 panics, want 1 to 3:\n%s", n, logs.String())
	}
}

// TestGuestLogsRateLimited: a guest flooding frames that each cause a log
// line gets a bounded number of lines, whether it keeps its MAC or forges
// a new one for every frame, and the limiter's memory stays bounded.
func TestGuestLogsRateLimited(t *testing.T) {
	s := testServer(t)
	var logs lockedBuffer
	s.cfg.Log = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	now := time.Unix(1e9, 0)
	s.guestLogs.now = func() time.Time { return now }
	s.SetBindings(map[string]netip.Addr{vmMAC.String(): vmIP, otherMAC.String(): netip.MustParseAddr("10.9.0.18")})

	// Forged chaddr (a Warn) and DECLINE (a Warn) from one MAC.
	for range 1000 {
		s.Handle(msgFrame(otherMAC, clientMsg(vmMAC, dhcpv4.MessageTypeRequest, vmIP)), serverMAC)
		s.Handle(clientFrame(otherMAC, dhcpv4.MessageTypeDecline, netip.Addr{}), serverMAC)
		s.Handle(arpRequest(otherMAC, vmMAC, vmIP, serverIP), serverMAC)
	}
	if n := strings.Count(logs.String(), "\n"); n != int(guestLogPerMAC.burst) {
		t.Fatalf("%d lines from one MAC's flood, want %v", n, guestLogPerMAC.burst)
	}
	// The MAC's bucket refills with time, and the line then says how many
	// were suppressed.
	now = now.Add(guestLogPerMAC.every)
	s.Handle(clientFrame(otherMAC, dhcpv4.MessageTypeDecline, netip.Addr{}), serverMAC)
	if !strings.Contains(logs.String(), "suppressed=2990") {
		t.Fatalf("no suppressed count after the refill:\n%s", logs.String())
	}

	// A new source MAC for every frame: the global budget bounds them.
	before := strings.Count(logs.String(), "\n")
	for range 20000 {
		src := net.HardwareAddr{0x52, 0x54, byte(rand.Uint32()), byte(rand.Uint32()), byte(rand.Uint32()), byte(rand.Uint32())}
		s.Handle(msgFrame(src, clientMsg(vmMAC, dhcpv4.MessageTypeRequest, vmIP)), serverMAC)
	}
	if n := strings.Count(logs.String(), "\n") - before; n > int(guestLogAll.burst) {
		t.Fatalf("%d lines from a flood of forged source MACs, want at most %v", n, guestLogAll.burst)
	}
	s.guestLogs.mu.Lock()
	tracked := len(s.guestLogs.keys)
	s.guestLogs.mu.Unlock()
	if tracked > guestLogMaxMACs {
		t.Fatalf("limiter tracks %d MACs, cap %d", tracked, guestLogMaxMACs)
	}

	// An ordinary client's exchange, from a MAC not flooding, still logs.
	now = now.Add(time.Minute)
	before = strings.Count(logs.String(), "\n")
	s.Handle(request(vmMAC, vmIP.String()), serverMAC)
	if n := strings.Count(logs.String(), "\n") - before; n != 1 || !strings.Contains(logs.String(), "dhcp ack") {
		t.Fatalf("the ACK after the flood logged %d lines", n)
	}
}
