package hostd

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// TestNetworkDHCPEmbedded: on the embedded default (no switch behind the
// OVSDB, so no socket), a DHCP network still computes its reservations
// from the host's VMs and reports them, and they follow VM creation and
// deletion; the checks on subnet, dhcp and uplink answer 400.
func TestNetworkDHCPEmbedded(t *testing.T) {
	m, _ := startMain(t)
	const tok = "s3cret-0123456789"
	u := m.URL() + "/v1"
	net := `{"vlan":7,"subnet":{"cidr":"10.30.0.0/24","gateway":"10.30.0.1","dns_servers":["10.30.0.1"]},"dhcp":true,"dhcp_server_ip":"10.30.0.254"}`
	if st, _, b := call(t, "PUT", u+"/networks/lan", tok, net); st != 200 && st != 201 {
		t.Fatalf("PUT network: %d %s", st, b)
	}
	getNet := func() api.Network {
		t.Helper()
		st, _, b := call(t, "GET", u+"/networks/lan", tok, "")
		var n api.Network
		if st != 200 || json.Unmarshal(b, &n) != nil {
			t.Fatalf("GET network: %d %s", st, b)
		}
		return n
	}
	n := getNet()
	if !n.DHCP || n.DHCPServerIP != "10.30.0.254" || n.Subnet == nil || n.Subnet.Gateway != "10.30.0.1" || len(n.Leases) != 0 {
		t.Fatalf("network read back as %+v", n)
	}
	const mac = "52:54:00:12:34:56"
	vm := `{"vcpu":1,"memory_mib":64,"running":false,"interfaces":[{"network":"lan","mac":"` + mac + `"}]}`
	if st, _, b := call(t, "PUT", u+"/vms/dhcp-vm", tok, vm); st != 200 && st != 201 {
		t.Fatalf("PUT vm: %d %s", st, b)
	}
	n = getNet()
	if len(n.Leases) != 1 || n.Leases[0].MAC != mac || n.Leases[0].VM != "dhcp-vm" {
		t.Fatalf("leases after the VM was created: %+v", n.Leases)
	}
	ip := n.Leases[0].IP
	if err := api.ValidateStaticIPv4(*n.Subnet, ip, "10.30.0.254"); err != nil {
		t.Fatalf("derived address %s: %v", ip, err)
	}
	// A reservation is not a lease: no guest has taken it (nothing can
	// here), so VM reads get no lease-sourced address from it.
	time.Sleep(100 * time.Millisecond)
	if l := m.svc.LeasesFor(strings.ToUpper(mac)); len(l) != 0 {
		t.Fatalf("LeasesFor reports the reservation %v before any DHCP exchange", l)
	}
	if st, _, b := call(t, "DELETE", u+"/vms/dhcp-vm", tok, ""); st >= 300 {
		t.Fatalf("DELETE vm: %d %s", st, b)
	}
	if n = getNet(); len(n.Leases) != 0 {
		t.Fatalf("leases after the VM was deleted: %+v", n.Leases)
	}

	for body, want := range map[string]string{
		`{"dhcp":true,"dhcp_server_ip":"10.30.0.254"}`:                                "dhcp needs a subnet",
		`{"subnet":{"cidr":"10.30.0.0/24"},"dhcp":true}`:                              "dhcp needs dhcp_server_ip",
		`{"subnet":{"cidr":"10.30.0.1/24"}}`:                                          "host bits set",
		`{"subnet":{"cidr":"10.30.0.0/24","gateway":"10.31.0.1"}}`:                    "not a host address",
		`{"subnet":{"cidr":"10.30.0.0/24"},"dhcp":true,"dhcp_server_ip":"10.99.0.1"}`: "outside",
		`{"uplink":"no such/if"}`:                                                     "interface name",
		`{"uplink":"kvmnone0"}`:                                                       `no network interface "kvmnone0"`,
		`{"uplink":"lo"}`:                                                             "loopback",
		`{"uplink":"vnet3"}`:                                                          "libvirt's VM tap devices",
		`{"uplink":"kvm-other"}`:                                                      "kvm-hostd's network bridges",
	} {
		st, e, b := call(t, "PUT", u+"/networks/bad", tok, body)
		if st != 400 || !strings.Contains(e.Message, want) {
			t.Errorf("%s: %d %s, want 400 with %q", body, st, b, want)
		}
	}
	if st, _, _ := call(t, "GET", u+"/networks/bad", tok, ""); st != 404 {
		t.Errorf("a refused network exists: GET answered %d", st)
	}
	// An existing interface is accepted and reported (nothing is realized
	// on the embedded OVSDB, so one holding addresses is fine there).
	up := harness.UplinkInterface(t)
	if st, _, b := call(t, "PUT", u+"/networks/up", tok, `{"vlan":9,"uplink":"`+up+`"}`); st >= 300 || !strings.Contains(string(b), `"uplink":"`+up+`"`) {
		t.Fatalf("PUT network with uplink %s: %d %s", up, st, b)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
