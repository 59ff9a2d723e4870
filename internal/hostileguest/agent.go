package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// agentCmd stops qemu-guest-agent and answers on its virtio port instead,
// as a guest's root user can: guest-sync and guest-ping as expected, and
// guest-network-get-interfaces with poisoned data (see interfacesReply).
// The mode file switches the poison at run time: "honest" (default) also
// reports the NIC's real IPv4 address, valid addresses outside its subnet
// and a flood of them; "poison" reports only what no host may pass on, so
// that nothing valid is left for the NIC.
func agentCmd(args []string) error {
	fs := flag.NewFlagSet("agent", flag.ExitOnError)
	port := fs.String("port", "/dev/virtio-ports/org.qemu.guest_agent.0", "the agent's virtio port")
	modeFile := fs.String("mode-file", "/run/kvm-hostile-mode", "file whose content selects the reply")
	victimMAC := fs.String("victim-mac", "", "another VM's MAC, claimed as one of this guest's NICs")
	victimIP := fs.String("victim-ip", "", "another VM's reserved address, claimed as this guest's")
	_ = fs.Parse(args)
	if out, err := exec.Command("systemctl", "stop", "qemu-guest-agent.service").CombinedOutput(); err != nil {
		return fmt.Errorf("stop qemu-guest-agent: %v: %s", err, out)
	}
	var f *os.File
	var err error
	for i := 0; i < 100; i++ { // the port is free once the real agent has exited
		if f, err = os.OpenFile(*port, os.O_RDWR, 0); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	r := bufio.NewReader(f)
	for {
		req, err := readObject(r)
		if err != nil {
			if errors.Is(err, io.EOF) { // the host side is not connected
				time.Sleep(100 * time.Millisecond)
				continue
			}
			return err
		}
		var cmd struct {
			Execute   string `json:"execute"`
			Arguments struct {
				ID json.RawMessage `json:"id"`
			} `json:"arguments"`
		}
		if json.Unmarshal(req, &cmd) != nil {
			continue
		}
		var out []byte
		switch cmd.Execute {
		case "guest-sync-delimited":
			out = append([]byte{0xff}, fmt.Sprintf(`{"return": %s}`, cmd.Arguments.ID)...)
		case "guest-sync":
			out = fmt.Appendf(nil, `{"return": %s}`, cmd.Arguments.ID)
		case "kvm-hostile-ping": // tells the test this agent, not the real one, holds the port
			out = []byte(`{"return": "hostile"}`)
		case "guest-ping":
			out = []byte(`{"return": {}}`)
		case "guest-info":
			out = []byte(`{"return": {"version": "7.2.0", "supported_commands": [{"enabled": true, "name": "guest-network-get-interfaces", "success-response": true}]}}`)
		case "kvm-hostile-poison":
			// From now on report poison only, give up the real lease (so the
			// host's DHCP server has no address for this guest either) and
			// write escape sequences to the console: a wait_for_ip now times
			// out and quotes the console.
			err := errors.Join(os.WriteFile(*modeFile, []byte("poison\n"), 0o644), releaseOwnLease(), consoleCmd(nil))
			if err != nil {
				out = fmt.Appendf(nil, `{"error": {"class": "GenericError", "desc": %q}}`, err.Error())
			} else {
				out = []byte(`{"return": {}}`)
			}
		case "guest-network-get-interfaces":
			mode, _ := os.ReadFile(*modeFile)
			out = interfacesReply(strings.TrimSpace(string(mode)) != "poison", *victimMAC, *victimIP)
		default:
			out = fmt.Appendf(nil, `{"error": {"class": "CommandNotFound", "desc": "The command %s has not been found"}}`, strings.Map(func(r rune) rune {
				if r < 0x20 || r == '"' || r == '\\' {
					return -1
				}
				return r
			}, cmd.Execute))
		}
		if _, err := f.Write(append(out, '\n')); err != nil {
			return err
		}
	}
}

// readObject reads one JSON object, skipping anything before its opening
// brace (libvirt may send a 0xFF delimiter first).
func readObject(r *bufio.Reader) ([]byte, error) {
	var b bytes.Buffer
	depth, inString, escaped := 0, false, false
	for {
		c, err := r.ReadByte()
		if err != nil {
			return nil, err
		}
		if depth == 0 && c != '{' {
			continue
		}
		b.WriteByte(c)
		switch {
		case inString && escaped:
			escaped = false
		case inString && c == '\\':
			escaped = true
		case c == '"':
			inString = !inString
		case !inString && c == '{':
			depth++
		case !inString && c == '}':
			depth--
			if depth == 0 {
				return b.Bytes(), nil
			}
		}
	}
}

// Poison is what the hostile agent reports besides, in honest mode, the
// NIC's real address. Each entry is a class a host must not pass on.
var (
	// PoisonIPv4 are addresses no guest may be reported to hold.
	PoisonIPv4 = []string{"0.0.0.0", "255.255.255.255", "169.254.169.254", "224.0.0.251", "127.0.0.1"}
	// PoisonOutOfSubnet come before the real address: a host that takes
	// the first IPv4 instead of one inside the NIC's subnet reports them.
	PoisonOutOfSubnet = []string{"192.0.2.1", "192.0.2.2", "198.51.100.7"}
	// PoisonFlood is how many valid-looking addresses follow the real one
	// on the same NIC, and PoisonNICs how many made-up NICs follow it: far
	// above what a host should keep (64 of each), and together under the
	// 2048 addresses libvirt itself accepts in one answer (it refuses the
	// whole answer beyond that, and then nothing reaches kvm-hostd).
	PoisonFlood = 1500
	PoisonNICs  = 300
)

// interfacesReply is the reply to guest-network-get-interfaces. It is
// written by hand, not marshalled, so that it can carry escapes that
// decode to what encoding/json would never produce (control characters, a
// lone surrogate, which decodes to invalid UTF-8), while staying JSON that
// libvirt parses: a reply libvirt cannot parse never reaches kvm-hostd.
func interfacesReply(honest bool, victimMAC, victimIP string) []byte {
	ifc, _ := nic()
	var b bytes.Buffer
	addr := func(typ, ip string, prefix int) {
		fmt.Fprintf(&b, `{"ip-address-type": %q, "ip-address": "%s", "prefix": %d},`, typ, ip, prefix)
	}
	b.WriteString(`{"return": [`)
	b.WriteString(`{"name": "lo", "hardware-address": "00:00:00:00:00:00", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8}]},`)
	if ifc != nil {
		fmt.Fprintf(&b, `{"name": "eth0\u001b]52;c;aG9zdGlsZQ==\u0007\u001b[2J", "hardware-address": "%s", "ip-addresses": [`, ifc.HardwareAddr)
		addr("ipv6", `fe80::1%\u001b[2Jeth0`, 64)
		addr("ipv6", "fe80::2%"+strings.Repeat("z", 1<<20), 64)
		// A lone surrogate: valid JSON that decodes to invalid UTF-8.
		addr("ipv4", `10.31.0.77\ud800`, 24)
		addr("ipv4", `10.31.0.78\u001b[31m`, 24)
		for _, ip := range PoisonIPv4 {
			addr("ipv4", ip, 24)
		}
		if victimIP != "" {
			addr("ipv4", victimIP, 24)
		}
		if honest {
			// Valid addresses, only outside the NIC's subnet: the host may
			// report them, but not as ipv4_address.
			for _, ip := range PoisonOutOfSubnet {
				addr("ipv4", ip, 24)
			}
			if ip := nicIPv4(ifc); ip != nil {
				addr("ipv4", ip.String(), 24)
			}
			for i := 0; i < PoisonFlood; i++ {
				addr("ipv4", fmt.Sprintf("10.%d.%d.%d", 100+i/65536, i/256%256, i%256), 24)
			}
		}
		b.Truncate(b.Len() - 1)
		b.WriteString(`]},`)
	}
	if victimMAC != "" && victimIP != "" {
		// The victim's NIC, claimed: a MAC that is not this VM's.
		fmt.Fprintf(&b, `{"name": "victim", "hardware-address": "%s", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "%s", "prefix": 24}]},`, victimMAC, victimIP)
	}
	for i := 0; i < PoisonNICs; i++ {
		fmt.Fprintf(&b, `{"name": "fake%d", "hardware-address": "52:54:00:ee:%02x:%02x", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "10.31.0.%d", "prefix": 24}]},`, i, i/256, i%256, 2+i%200)
	}
	b.Truncate(b.Len() - 1)
	b.WriteString(`]}`)
	return b.Bytes()
}

// releaseOwnLease sends a DHCPRELEASE for the NIC's address, as itself.
func releaseOwnLease() error {
	l, err := openLink()
	if err != nil {
		return err
	}
	defer l.Close()
	ip := nicIPv4(l.ifc)
	if ip == nil {
		return errors.New("no IPv4 address to release")
	}
	m, err := dhcpv4.New(dhcpv4.WithMessageType(dhcpv4.MessageTypeRelease), dhcpv4.WithHwAddr(l.ifc.HardwareAddr), dhcpv4.WithClientIP(ip))
	if err != nil {
		return err
	}
	return l.sendDHCP(l.ifc.HardwareAddr, m)
}
