package kvm

import (
	"net"
	"net/http"
	"os/exec"
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
