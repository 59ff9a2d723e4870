package vswitch

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ovn-kubernetes/libovsdb/cache"
	"github.com/ovn-kubernetes/libovsdb/model"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Port security (kvm_network.port_security): OpenFlow rules in table 0 of
// a network's bridge confine every VM port to its own MAC and, where the
// NIC's IPv4 address is known, to that address, and drop DHCP server
// replies from VM ports. Everything else on the bridge (uplinks, tunnels,
// the DHCP server's port, the bridge's own port) keeps the default
// priority-0 NORMAL flow that ovs-vswitchd installs.
//
// The flows live in ovs-vswitchd only, so they are recomputed from OVSDB
// (which ports exist, their MAC and ofport) and from what the service
// knows about addresses, and reconciled: at startup, periodically (a
// restarted vswitchd has none) and right after ports change. Each bridge
// is replaced atomically in one OpenFlow bundle and only when what is
// installed differs, so a steady state sends nothing.

// portSecCookie marks every flow kvm-hostd installs for port security
// ("kvm-psec" in ASCII), so they can be found and replaced without
// touching anyone else's flows.
const portSecCookie uint64 = 0x6b766d2d70736563

// Priorities in table 0. The DHCP-server drop must beat the IPv4 allow
// rule, which would otherwise pass a reply sent from the VM's own address.
const (
	prioDHCPServerDrop = 120
	prioDHCPClient     = 110
	prioAllow          = 100
	prioPortDrop       = 10
)

// securedPort is a VM port as port security sees it.
type securedPort struct {
	Name   string
	OFPort int
	// MAC is canonical (lower case); "" when the port's recorded MAC is
	// not a valid one: then the port may send nothing.
	MAC string
	// IPv4 is the NIC's known address, "" when not known.
	IPv4 string
}

// ofFlow is one OpenFlow rule in table 0 with the port-security cookie.
type ofFlow struct {
	priority int
	match    []string // ovs-ofctl match fields, e.g. "in_port=5"
	actions  string
}

// key is a canonical form that equals for a desired flow and the same flow
// as ovs-ofctl dump-flows prints it (which reorders match fields).
func (f ofFlow) key() string {
	m := slices.Clone(f.match)
	sort.Strings(m)
	return strconv.Itoa(f.priority) + "|" + strings.Join(m, ",") + "|" + f.actions
}

func (f ofFlow) addLine() string {
	return fmt.Sprintf("add cookie=%#x,table=0,priority=%d,%s,actions=%s", portSecCookie, f.priority, strings.Join(f.match, ","), f.actions)
}

// portSecurityFlows is the desired flow set for ports, sorted by key.
func portSecurityFlows(ports []securedPort) []ofFlow {
	var out []ofFlow
	add := func(prio int, actions string, match ...string) {
		out = append(out, ofFlow{priority: prio, match: match, actions: actions})
	}
	for _, p := range ports {
		in := "in_port=" + strconv.Itoa(p.OFPort)
		add(prioPortDrop, "drop", in)
		// A VM answering DHCP would hijack its neighbours' configuration
		// (rogue gateway or DNS): never from a VM port, whatever its source.
		add(prioDHCPServerDrop, "drop", "udp", in, "tp_src=67")
		if p.MAC == "" {
			continue
		}
		src := "dl_src=" + p.MAC
		// DISCOVER/REQUEST before the guest has an address; once it has
		// one, the IPv4 rule below covers renewals.
		add(prioDHCPClient, "NORMAL", "udp", in, src, "nw_src=0.0.0.0", "tp_src=68", "tp_dst=67")
		// IPv6 is checked on the source MAC only: its addresses (SLAAC,
		// privacy addresses, link-local) are not known to kvm-hostd.
		add(prioAllow, "NORMAL", "ipv6", in, src)
		// QEMU announces a VM that has just migrated with RARP frames from
		// its MAC, so that switches learn where it is now.
		add(prioAllow, "NORMAL", "rarp", in, src)
		if p.IPv4 == "" {
			// Address not known (no static address, no DHCP reservation):
			// the MAC is all that can be enforced.
			add(prioAllow, "NORMAL", "arp", in, src, "arp_sha="+p.MAC)
			add(prioAllow, "NORMAL", "ip", in, src)
			continue
		}
		add(prioAllow, "NORMAL", "arp", in, src, "arp_sha="+p.MAC, "arp_spa="+p.IPv4)
		// Duplicate address detection probes (RFC 5227) carry 0.0.0.0.
		add(prioAllow, "NORMAL", "arp", in, src, "arp_sha="+p.MAC, "arp_spa=0.0.0.0")
		add(prioAllow, "NORMAL", "ip", in, src, "nw_src="+p.IPv4)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].key() < out[b].key() })
	return out
}

// canonicalMAC returns mac in lower-case colon form, "" when invalid or
// not an Ethernet (48-bit) address.
func canonicalMAC(mac string) string {
	hw, err := net.ParseMAC(strings.TrimSpace(mac))
	if err != nil || len(hw) != 6 {
		return ""
	}
	return hw.String()
}

// normalizeKnown validates the service's MAC -> IPv4 map: keys become
// canonical MACs, entries that are not a MAC and an IPv4 address are
// dropped, so nothing unchecked reaches a flow.
func normalizeKnown(known map[string]string) map[string]string {
	out := make(map[string]string, len(known))
	for mac, ip := range known {
		m := canonicalMAC(mac)
		a, err := netip.ParseAddr(ip)
		if m == "" || err != nil || !a.Is4() || a.IsUnspecified() {
			continue
		}
		out[m] = a.String()
	}
	return out
}

// isVMPort reports whether a bridge port is a VM's NIC: ours record vm-id
// on the port; libvirt's vnetN taps carry attached-mac / vm-id on the
// interface. Role ports, tunnels and patch ports never are.
func isVMPort(p *portState) bool {
	i := p.iface()
	if i == nil || p.port.ExternalIDs[keyRole] != "" || isTunnelType(i.Type) || i.Type == "patch" {
		return false
	}
	return p.port.ExternalIDs[keyVM] != "" || i.ExternalIDs[keyMAC] != "" || i.ExternalIDs[keyVM] != ""
}

// securedPorts lists the VM ports of a bridge with what port security
// needs. pending is true when a VM port has no OpenFlow port number yet
// (vswitchd has not created it): it is left out this round.
func securedPorts(st *bridgeState, known map[string]string) (ports []securedPort, pending bool) {
	for _, p := range st.ports {
		if !isVMPort(p) {
			continue
		}
		i := p.iface()
		if i.Ofport == nil || *i.Ofport <= 0 {
			pending = true
			continue
		}
		mac := i.ExternalIDs[keyMAC]
		if mac == "" {
			mac = p.port.ExternalIDs[keyMAC]
		}
		sp := securedPort{Name: p.port.Name, OFPort: *i.Ofport, MAC: canonicalMAC(mac)}
		if sp.MAC != "" {
			sp.IPv4 = known[sp.MAC]
		}
		ports = append(ports, sp)
	}
	return ports, pending
}

// desiredPortSecurity is the flow set a bridge should hold: none when its
// network has port security off.
func desiredPortSecurity(st *bridgeState, known map[string]string) ([]ofFlow, bool) {
	if !portSecurityOn(st.br.ExternalIDs) {
		return nil, false
	}
	ports, pending := securedPorts(st, normalizeKnown(known))
	return portSecurityFlows(ports), pending
}

// portSecurityOn reads a bridge's port_security setting (default true).
func portSecurityOn(ext map[string]string) bool { return ext[keyPortSecurity] != "false" }

// SyncPortSecurity converges the port-security flows of network's bridge:
// the rules for every VM port when the network has port security, none
// otherwise. known maps a NIC's MAC (any case) to its known IPv4 address.
// It reports pending when a VM port was skipped because vswitchd has not
// given it an OpenFlow port yet, and changed when flows were rewritten.
// With the embedded OVSDB there is no switch, and nothing is applied.
func (s *OVS) SyncPortSecurity(ctx context.Context, network string, known map[string]string) (pending, changed bool, err error) {
	if err := api.ValidateName("network", network); err != nil {
		return false, false, api.Errorf(api.CodeInvalid, "%s", err)
	}
	s.watchPorts()
	st, err := s.loadBridge(ctx, api.BridgeName(network))
	if err != nil {
		return false, false, err
	}
	if st == nil || !owned(st.br.ExternalIDs) || st.br.ExternalIDs[keyNetwork] != network {
		return false, false, errNotFound("network %q not found", network)
	}
	want, pending := desiredPortSecurity(st, known)
	if s.embedded != nil {
		// No switch: nothing numbers ports or holds flows, so nothing is
		// pending either.
		return false, false, nil
	}
	s.ofMu.Lock()
	defer s.ofMu.Unlock()
	target := s.ofTarget(st.br.Name)
	have, err := s.dumpPortSecurity(ctx, target)
	if err != nil {
		return pending, false, err
	}
	if slices.Equal(have, flowKeys(want)) {
		return pending, false, nil
	}
	if err := s.replacePortSecurity(ctx, target, want); err != nil {
		return pending, false, err
	}
	s.ofApplies.Add(1)
	s.log.Info("port security flows applied", "network", network, "bridge", st.br.Name, "flows", len(want), "previous", len(have))
	return pending, true, nil
}

func flowKeys(fs []ofFlow) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = f.key()
	}
	sort.Strings(out)
	return out
}

// ofTarget is how ovs-ofctl reaches a bridge. ovs-vswitchd listens on
// <rundir>/<bridge>.mgmt, and kvm-hostd's OVSDB socket lives in that same
// rundir (the system's /var/run/openvswitch, or a private instance's
// OVS_RUNDIR), so the socket is named explicitly rather than left to
// ovs-ofctl's compiled-in default. Over tcp there is no such directory.
func (s *OVS) ofTarget(bridge string) string {
	if s.rundir == "" {
		return bridge
	}
	return "unix:" + s.rundir + "/" + bridge + ".mgmt"
}

// ofctlTimeout bounds one ovs-ofctl call; a wedged vswitchd must not stall
// the reconciler.
const ofctlTimeout = 10 * time.Second

func (s *OVS) ofctl(ctx context.Context, stdin []byte, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, ofctlTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ovs-ofctl", append([]string{"--timeout=5"}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, api.Errorf(api.CodeUnavailable, "ovs-ofctl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// dumpPortSecurity returns the keys of the port-security flows installed
// on the bridge, sorted.
func (s *OVS) dumpPortSecurity(ctx context.Context, target string) ([]string, error) {
	out, err := s.ofctl(ctx, nil, "--no-names", "--no-stats", "dump-flows", target, fmt.Sprintf("cookie=%#x/-1", portSecCookie))
	if err != nil {
		return nil, err
	}
	keys := []string{}
	for _, line := range strings.Split(string(out), "\n") {
		if f, ok := parseDumpedFlow(line); ok {
			keys = append(keys, f.key())
		}
	}
	sort.Strings(keys)
	return keys, nil
}

// parseDumpedFlow reads one line of dump-flows --no-stats output, e.g.
// " cookie=0x6b..., priority=100,ip,in_port=5,dl_src=...,nw_src=10.0.0.5 actions=NORMAL".
// A line it does not understand yields a flow no desired one equals, so it
// is replaced rather than trusted.
func parseDumpedFlow(line string) (ofFlow, bool) {
	line = strings.TrimSpace(line)
	if line == "" || strings.HasPrefix(line, "NXST_FLOW") || strings.HasPrefix(line, "OFPST_FLOW") {
		return ofFlow{}, false
	}
	matchPart, actions, _ := strings.Cut(line, " actions=")
	f := ofFlow{actions: strings.TrimSpace(actions)}
	for _, tok := range strings.Split(matchPart, ",") {
		tok = strings.TrimSpace(tok)
		switch {
		case tok == "", strings.HasPrefix(tok, "cookie="), tok == "table=0":
		case strings.HasPrefix(tok, "priority="):
			f.priority, _ = strconv.Atoi(strings.TrimPrefix(tok, "priority="))
		default:
			f.match = append(f.match, tok)
		}
	}
	return f, true
}

// replacePortSecurity swaps the bridge's port-security flows for want in
// one OpenFlow bundle: packets see the old set or the new one, never a
// port without rules in between.
func (s *OVS) replacePortSecurity(ctx context.Context, target string, want []ofFlow) error {
	var b strings.Builder
	fmt.Fprintf(&b, "delete cookie=%#x/-1\n", portSecCookie)
	for _, f := range want {
		b.WriteString(f.addLine())
		b.WriteByte('\n')
	}
	_, err := s.ofctl(ctx, []byte(b.String()), "--bundle", "add-flows", target, "-")
	return err
}

// WatchPorts calls fn (which must not block) whenever a bridge port
// appears, goes, or gets its OpenFlow port number or MAC: that is when a
// domain started, a migration landed or a NIC changed, and port security
// should be reconciled at once rather than at the next periodic round.
func (s *OVS) WatchPorts(fn func()) {
	s.watchMu.Lock()
	s.watchFn = fn
	s.watchMu.Unlock()
	s.watchPorts()
}

// watchPorts (re-)registers the watcher on the client's cache. libovsdb
// builds a new cache on every reconnect, dropping its handlers, so every
// reconcile round checks.
func (s *OVS) watchPorts() {
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	if s.watchFn == nil {
		return
	}
	c := s.client.Cache()
	if c == nil || c == s.watched {
		return
	}
	s.watched = c
	fn := s.watchFn
	c.AddEventHandler(&cache.EventHandlerFuncs{
		AddFunc: func(table string, _ model.Model) {
			if table == "Interface" {
				fn()
			}
		},
		UpdateFunc: func(table string, old, cur model.Model) {
			o, ok1 := old.(*Interface)
			n, ok2 := cur.(*Interface)
			if ok1 && ok2 && (!eqIntPtr(o.Ofport, n.Ofport) || o.ExternalIDs[keyMAC] != n.ExternalIDs[keyMAC]) {
				fn()
			}
		},
		DeleteFunc: func(table string, _ model.Model) {
			if table == "Interface" {
				fn()
			}
		},
	})
}
