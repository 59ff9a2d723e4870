package kvm

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

// guestUser is the guest image's default user, the one cloud-init gives
// the SSH key.
const guestUser = "debian"

// guestKey is an ed25519 key pair made for one test run.
type guestKey struct {
	signer     ssh.Signer
	authorized string // the authorized_keys line
}

func newGuestKey() (guestKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return guestKey{}, err
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return guestKey{}, err
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))) + " kvm-guest-test"
	return guestKey{signer: signer, authorized: line}, nil
}

// guestDial opens a TCP connection from inside the namespace host h (the
// socket keeps the namespace it was created in).
func guestDial(h *realstack.NSHost, addr string, timeout time.Duration) (net.Conn, error) {
	var conn net.Conn
	err := realNetInNetns(h, func() error {
		var err error
		conn, err = net.DialTimeout("tcp", addr, timeout)
		return err
	})
	return conn, err
}

// guestConnect logs in as guestUser with the key, over a connection
// opened on the namespace host h.
func guestConnect(h *realstack.NSHost, ip string, key guestKey) (*ssh.Client, error) {
	addr := net.JoinHostPort(ip, "22")
	conn, err := guestDial(h, addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	cfg := &ssh.ClientConfig{
		User:            guestUser,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(key.signer)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), // a fresh guest: nothing to pin
		Timeout:         30 * time.Second,
	}
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	if err != nil {
		conn.Close()
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	return ssh.NewClient(c, chans, reqs), nil
}

// guestRun runs cmd in a new session of c and returns its combined
// output; a command that does not finish within timeout fails (and the
// session is closed), so a dead connection never hangs the test.
func guestRun(c *ssh.Client, cmd string, timeout time.Duration) (string, error) {
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	var mu sync.Mutex
	var session *ssh.Session
	go func() {
		// Opening the session waits for the server too.
		s, err := c.NewSession()
		if err != nil {
			done <- result{nil, err}
			return
		}
		mu.Lock()
		session = s
		mu.Unlock()
		defer s.Close()
		out, err := s.CombinedOutput(cmd)
		done <- result{out, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return string(r.out), fmt.Errorf("%q: %v: %s", cmd, r.err, strings.TrimSpace(string(r.out)))
		}
		return string(r.out), nil
	case <-time.After(timeout):
		mu.Lock()
		if session != nil {
			_ = session.Close()
		}
		mu.Unlock()
		return "", fmt.Errorf("%q: no answer in %s", cmd, timeout)
	}
}

// guestQEMUStart is when QEMU last started the domain on the namespace
// host h, from the "starting up" line libvirt writes into the domain log.
func guestQEMUStart(h *realstack.NSHost, domain string) (time.Time, error) {
	f, err := os.Open(filepath.Join(h.StateDir, "log", "qemu", domain+".log"))
	if err != nil {
		return time.Time{}, err
	}
	defer f.Close()
	var last time.Time
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		i := strings.Index(line, ": starting up")
		if i < 0 {
			continue
		}
		if ts, err := time.Parse("2006-01-02 15:04:05.000-0700", line[:i]); err == nil {
			last = ts
		}
	}
	if last.IsZero() {
		return last, fmt.Errorf("no \"starting up\" line in %s's log on %s", domain, h.Name)
	}
	return last, nil
}

// guestConsole is the tail of a domain's serial console log on the
// namespace host h (kvm-hostd logs the serial port through virtlogd), for
// error messages.
func guestConsole(h *realstack.NSHost, domain string) string {
	b, err := os.ReadFile(filepath.Join(h.StateDir, "log", "qemu", domain+"-serial.log"))
	if err != nil {
		return fmt.Sprintf("(no serial log of %s on %s: %v)", domain, h.Name, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return fmt.Sprintf("last serial console lines of %s on %s:\n%s", domain, h.Name, strings.Join(lines, "\n"))
}

// guestUptime is the guest's /proc/uptime in seconds.
func guestUptime(c *ssh.Client) (float64, error) {
	out, err := guestRun(c, "cat /proc/uptime", 20*time.Second)
	if err != nil {
		return 0, err
	}
	f := strings.Fields(out)
	if len(f) == 0 {
		return 0, fmt.Errorf("/proc/uptime: %q", out)
	}
	return strconv.ParseFloat(f[0], 64)
}

// pinger sends an ICMP echo request every interval from a raw socket
// opened on a namespace host and records which were answered: the lost
// requests times the interval is the downtime a client on that host sees.
type pinger struct {
	conn     net.PacketConn
	dst      *net.IPAddr
	id       int
	interval time.Duration

	mu      sync.Mutex
	sent    int
	replies map[int]bool
	stop    chan struct{}
	done    sync.WaitGroup
}

var pingerIDs struct {
	sync.Mutex
	next int
}

func startPinger(h *realstack.NSHost, src, dst string, interval time.Duration) (*pinger, error) {
	var conn net.PacketConn
	if err := realNetInNetns(h, func() error {
		var err error
		conn, err = net.ListenPacket("ip4:icmp", src)
		return err
	}); err != nil {
		return nil, err
	}
	pingerIDs.Lock()
	pingerIDs.next++
	id := (os.Getpid() + 0x4000 + pingerIDs.next) & 0xffff
	pingerIDs.Unlock()
	p := &pinger{conn: conn, dst: &net.IPAddr{IP: net.ParseIP(dst)}, id: id, interval: interval,
		replies: map[int]bool{}, stop: make(chan struct{})}
	p.done.Add(2)
	go p.receive()
	go p.send()
	return p, nil
}

func (p *pinger) send() {
	defer p.done.Done()
	tick := time.NewTicker(p.interval)
	defer tick.Stop()
	for seq := 1; ; seq++ {
		msg := []byte{8, 0, 0, 0, byte(p.id >> 8), byte(p.id), byte(seq >> 8), byte(seq), 'k', 'v', 'm', '-', 'm', 'i', 'g'}
		sum := icmpChecksum(msg)
		msg[2], msg[3] = byte(sum>>8), byte(sum)
		_, _ = p.conn.WriteTo(msg, p.dst)
		p.mu.Lock()
		p.sent = seq
		p.mu.Unlock()
		select {
		case <-p.stop:
			return
		case <-tick.C:
		}
	}
}

func (p *pinger) receive() {
	defer p.done.Done()
	buf := make([]byte, 1500)
	for {
		n, from, err := p.conn.ReadFrom(buf)
		if err != nil {
			return // closed
		}
		if n >= 8 && buf[0] == 0 && from.String() == p.dst.String() && int(buf[4])<<8|int(buf[5]) == p.id {
			p.mu.Lock()
			p.replies[int(buf[6])<<8|int(buf[7])] = true
			p.mu.Unlock()
		}
	}
}

// pingResult summarizes a pinger's run.
type pingResult struct {
	Sent, Lost  int
	LongestLoss int // longest run of consecutive lost requests
}

func (r pingResult) String() string {
	return fmt.Sprintf("%d sent, %d lost (longest run %d)", r.Sent, r.Lost, r.LongestLoss)
}

// Stop stops sending, gives the last requests a second to be answered,
// and returns what was lost.
func (p *pinger) Stop() pingResult {
	close(p.stop)
	time.Sleep(time.Second)
	_ = p.conn.Close()
	p.done.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	r := pingResult{Sent: p.sent}
	run := 0
	for seq := 1; seq <= p.sent; seq++ {
		if p.replies[seq] {
			run = 0
			continue
		}
		r.Lost++
		run++
		if run > r.LongestLoss {
			r.LongestLoss = run
		}
	}
	return r
}

// median of durations (the upper one of the two middle values for an
// even count).
func medianDuration(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// guestMemcheck is a workload for a guest that migrates: it keeps
// rewriting every page of 32 MiB (dirtying memory as fast as the guest
// can, so the migration has to chase it) and checks each page before
// rewriting it. Page i holds the value written one round ago, so a write
// that a migration lost (a page the target got stale) shows as a page
// holding an older value. It appends "lost write ..." lines to its log,
// and "round N" after each round.
const guestMemcheck = `
import mmap, struct, sys
N, PAGE = 8192, 4096
m = mmap.mmap(-1, N * PAGE)
put, get = struct.pack_into, struct.unpack_from
log = open(sys.argv[1], "a", buffering=1)
g = 1
for i in range(N):
    put("<Q", m, i * PAGE, g)
    g += 1
log.write("started\n")
r = 0
while True:
    for i in range(N):
        o = i * PAGE
        v = get("<Q", m, o)[0]
        if v != g - N:
            log.write("lost write: page %d holds %d, want %d (round %d)\n" % (i, v, g - N, r))
        put("<Q", m, o, g)
        g += 1
    r += 1
    log.write("round %d\n" % r)
`

// startGuestMemcheck starts guestMemcheck in the background on the guest
// of c, detached from the SSH session.
func startGuestMemcheck(c *ssh.Client) error {
	cmd := "cat > /tmp/memcheck.py <<'EOF'\n" + guestMemcheck + "EOF\n" +
		"rm -f /tmp/memcheck.log; setsid nohup python3 /tmp/memcheck.py /tmp/memcheck.log </dev/null >/tmp/memcheck.out 2>&1 &\n" +
		"echo $! > /tmp/memcheck.pid\n" +
		"for i in $(seq 100); do grep -q started /tmp/memcheck.log 2>/dev/null && exit 0; sleep 0.2; done; cat /tmp/memcheck.out; exit 1"
	_, err := guestRun(c, cmd, time.Minute)
	return err
}

// guestMemcheckRounds returns how many rounds the guest's memcheck has
// completed (a multiple of 5), and an error if it reported a lost write
// or no longer runs.
func guestMemcheckRounds(c *ssh.Client) (int, error) {
	out, err := guestRun(c, "grep -m 6 'lost write' /tmp/memcheck.log; echo lost $(grep -c 'lost write' /tmp/memcheck.log); "+
		"tail -n 1 /tmp/memcheck.log; cat /tmp/memcheck.out; kill -0 $(cat /tmp/memcheck.pid) && echo running", time.Minute)
	if err != nil {
		return 0, err
	}
	rounds := 0
	var lost []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "lost write") {
			lost = append(lost, l)
		}
		if n, ok := strings.CutPrefix(l, "lost "); ok && n != "0" {
			lost = append(lost, "("+n+" lost writes in all)")
		}
		if n, ok := strings.CutPrefix(l, "round "); ok {
			rounds, _ = strconv.Atoi(n)
		}
	}
	if len(lost) > 0 {
		return rounds, fmt.Errorf("the guest's memory lost writes:\n%s", strings.Join(lost, "\n"))
	}
	if !strings.HasSuffix(strings.TrimSpace(out), "running") {
		return rounds, fmt.Errorf("the guest's memcheck workload died: %s", out)
	}
	return rounds, nil
}
