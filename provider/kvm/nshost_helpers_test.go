package kvm

import (
	"net"
	"net/http"
	"os/exec"
	"slices"
	"testing"

	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

// hostsGateway is the root bridge's address: every namespace host reaches
// it over its underlay.
const hostsGateway = realstack.DefaultHostSubnet + ".254"

// serveToHosts serves h on the root bridge's address until the test ends
// and returns its base URL. Namespace hosts must be up.
func serveToHosts(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(hostsGateway, "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}

// serveGuestImage serves the guest image at image to namespace hosts and
// returns its URL (a source_url kvm-hostd may fetch with the
// --fetch-allow startNSHostd gives it).
func serveGuestImage(t *testing.T, image string) string {
	t.Helper()
	return serveToHosts(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, image)
	})) + "/debian-bookworm.qcow2"
}

// startNSHostd starts kvm-hostd as host-a inside the namespace host h
// (started with OVS): its own libvirtd and Open vSwitch, its pool in
// poolDir, allowed to fetch from the hosts' subnet (serveToHosts).
func startNSHostd(t *testing.T, h *realstack.NSHost, poolDir string) *harness.Cluster {
	t.Helper()
	if err := realNetUnderlay(h, hostsGateway); err != nil {
		t.Fatal(err)
	}
	return startHosts(t, harness.Options{
		Hosts:      []string{"host-a"},
		LibvirtURI: "qemu:///system",
		OVSDB:      "embedded", // replaced by the host's own OVS below
		ListenIPs:  map[string]string{"host-a": h.IP},
		PoolDirs:   map[string]string{"host-a": poolDir},
		ExtraHostArgs: map[string][]string{"host-a": {
			"--ovsdb", h.OVS.Endpoint,
			"--fetch-allow", realstack.DefaultHostSubnet + ".0/24",
		}},
		Wrap: func(_ string, argv []string) *exec.Cmd { return h.Command(argv[0], argv[1:]...) },
	})
}

// startMigrationHosts starts kvm-hostd as each host of byHost (host name →
// namespace host, no OVS of their own) with a migration URI, its pool in
// poolDir and fetch access to the hosts' subnet; extra are further flags
// for every host.
func startMigrationHosts(t *testing.T, byHost map[string]*realstack.NSHost, poolDir string, extra ...string) *harness.Cluster {
	t.Helper()
	opts := harness.Options{
		LibvirtURI:    "qemu:///system",
		OVSDB:         "embedded",
		ListenIPs:     map[string]string{},
		ExtraHostArgs: map[string][]string{},
		PoolDirs:      map[string]string{},
		Wrap: func(host string, argv []string) *exec.Cmd {
			return byHost[host].Command(argv[0], argv[1:]...)
		},
	}
	for name, h := range byHost {
		opts.Hosts = append(opts.Hosts, name)
		opts.ListenIPs[name] = h.IP
		opts.ExtraHostArgs[name] = append([]string{"--migration-uri", h.URI, "--fetch-allow", realstack.DefaultHostSubnet + ".0/24"}, extra...)
		opts.PoolDirs[name] = poolDir
	}
	slices.Sort(opts.Hosts)
	return startHosts(t, opts)
}

// parallelNSHostTest lets a real test on namespace hosts run beside another
// one: each starts its own set of hosts (realstack gives them distinct
// namespaces and addresses), and under TCG one guest keeps about one core
// busy, so on a two-core machine two such tests take little more wall time
// than one. Tests that set process environment (t.Setenv) cannot use it.
// Call it before the test's own deadline starts: a parallel test waits for
// the package's serial tests first.
func parallelNSHostTest(t *testing.T) {
	t.Helper()
	t.Parallel()
}
