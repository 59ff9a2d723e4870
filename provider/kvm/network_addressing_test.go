package kvm

import (
	"context"
	"fmt"
	"regexp"
	"testing"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// testAccCheckNetworkHosts checks what each host realized: its own DHCP
// server address and uplink.
func testAccCheckNetworkHosts(t *testing.T, c *harness.Cluster, name string, serverIPs, uplinks map[string]string) resource.TestCheckFunc {
	return func(*terraform.State) error {
		for _, h := range c.Hosts {
			n, err := hostClient(t, c, h.Name).GetNetwork(context.Background(), name)
			if err != nil {
				return err
			}
			if n.DHCPServerIP != serverIPs[h.Name] || n.DHCP != (serverIPs[h.Name] != "") {
				return fmt.Errorf("%s: dhcp %v server %q, want %q", h.Name, n.DHCP, n.DHCPServerIP, serverIPs[h.Name])
			}
			if n.Uplink != uplinks[h.Name] {
				return fmt.Errorf("%s: uplink %q, want %q", h.Name, n.Uplink, uplinks[h.Name])
			}
		}
		return nil
	}
}

// TestAccNetwork_subnetDHCPUplinks: subnet, dhcp and uplinks on the
// embedded default. Each host gets its own DHCP server address from the
// top of the subnet and its own uplink; the plan after apply is empty;
// changing the subnet's DNS servers or dropping an uplink is an in-place
// update; import reads everything back.
func TestAccNetwork_subnetDHCPUplinks(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a", "host-b"}})
	cfg := func(dns, uplinks string) string {
		return c.ProviderHCL() + `
resource "kvm_network" "lan" {
  name = "lan"
  vlan = 100
  subnet = {
    cidr        = "10.40.0.0/24"
    gateway     = "10.40.0.1"
    dns_servers = [` + dns + `]
  }
  dhcp    = true
  uplinks = ` + uplinks + `
}
`
	}
	// kvm-hostd checks that the interface exists on its host and is not a
	// loopback device; on the embedded default (which takes no interface
	// over) any other interface of this machine will do.
	up := harness.UplinkInterface(t)
	both := `{ host-a = "` + up + `", host-b = "` + up + `" }`
	onlyB := `{ host-b = "` + up + `" }`
	servers := map[string]string{"host-a": "10.40.0.254", "host-b": "10.40.0.253"}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy:             testAccCheckNetworkGone(t, c, "lan"),
		Steps: []resource.TestStep{
			{
				Config: cfg(`"10.40.0.1"`, both),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_network.lan", tfjsonpath.New("subnet").AtMapKey("cidr"), knownvalue.StringExact("10.40.0.0/24")),
					statecheck.ExpectKnownValue("kvm_network.lan", tfjsonpath.New("subnet").AtMapKey("gateway"), knownvalue.StringExact("10.40.0.1")),
					statecheck.ExpectKnownValue("kvm_network.lan", tfjsonpath.New("subnet").AtMapKey("dns_servers"),
						knownvalue.ListExact([]knownvalue.Check{knownvalue.StringExact("10.40.0.1")})),
					statecheck.ExpectKnownValue("kvm_network.lan", tfjsonpath.New("dhcp"), knownvalue.Bool(true)),
					statecheck.ExpectKnownValue("kvm_network.lan", tfjsonpath.New("uplinks"), knownvalue.MapExact(map[string]knownvalue.Check{
						"host-a": knownvalue.StringExact(up), "host-b": knownvalue.StringExact(up)})),
					statecheck.ExpectKnownValue("kvm_network.lan", tfjsonpath.New("host_status"), knownvalue.MapExact(map[string]knownvalue.Check{
						"host-a": knownvalue.StringExact("ready"), "host-b": knownvalue.StringExact("ready")})),
				},
				Check: testAccCheckNetworkHosts(t, c, "lan", servers, map[string]string{"host-a": up, "host-b": up}),
			},
			{
				Config:                  cfg(`"10.40.0.1"`, both),
				ResourceName:            "kvm_network.lan",
				ImportState:             true,
				ImportStateId:           "lan",
				ImportStateVerify:       true,
				ImportStateVerifyIgnore: []string{"timeouts"},
			},
			{
				Config: cfg(`"10.40.0.1", "9.9.9.9"`, onlyB),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_network.lan", plancheck.ResourceActionUpdate),
				}},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_network.lan", tfjsonpath.New("uplinks"), knownvalue.MapExact(map[string]knownvalue.Check{
						"host-b": knownvalue.StringExact(up)})),
				},
				Check: testAccCheckNetworkHosts(t, c, "lan", servers, map[string]string{"host-b": up}),
			},
			{
				// Drift: host-b's DHCP port deleted out of band shows in the
				// plan (the switch is the embedded OVSDB, so this deletes the
				// network's port rows through the host's own API: turning
				// dhcp off there is what an operator's mistake looks like).
				PreConfig: func() {
					spec := api.NetworkSpec{VLAN: 100, Subnet: &api.Subnet{CIDR: "10.40.0.0/24", Gateway: "10.40.0.1",
						DNSServers: []string{"10.40.0.1", "9.9.9.9"}}, Uplink: up}
					if _, err := hostClient(t, c, "host-b").PutNetwork(context.Background(), "lan", spec); err != nil {
						t.Fatal(err)
					}
				},
				Config:             cfg(`"10.40.0.1", "9.9.9.9"`, onlyB),
				PlanOnly:           true,
				ExpectNonEmptyPlan: true,
			},
			{
				Config: cfg(`"10.40.0.1", "9.9.9.9"`, onlyB),
				Check:  testAccCheckNetworkHosts(t, c, "lan", servers, map[string]string{"host-b": up}),
			},
			{
				// Drift on the host that is not read for the sample: host-b's
				// subnet changed behind Terraform's back shows as well.
				PreConfig: func() {
					spec := api.NetworkSpec{VLAN: 100, Subnet: &api.Subnet{CIDR: "10.40.0.0/24", Gateway: "10.40.0.2",
						DNSServers: []string{"10.40.0.1", "9.9.9.9"}}, DHCP: true, DHCPServerIP: "10.40.0.253", Uplink: up}
					if _, err := hostClient(t, c, "host-b").PutNetwork(context.Background(), "lan", spec); err != nil {
						t.Fatal(err)
					}
				},
				Config:             cfg(`"10.40.0.1", "9.9.9.9"`, onlyB),
				PlanOnly:           true,
				ExpectNonEmptyPlan: true,
			},
			{
				Config: cfg(`"10.40.0.1", "9.9.9.9"`, onlyB),
				Check: func(*terraform.State) error {
					n, err := hostClient(t, c, "host-b").GetNetwork(context.Background(), "lan")
					if err != nil {
						return err
					}
					if n.Subnet == nil || n.Subnet.Gateway != "10.40.0.1" {
						return fmt.Errorf("host-b's subnet not repaired: %+v", n.Subnet)
					}
					return nil
				},
			},
		},
	})
}

// TestAccNetwork_addressingValidation: mistakes in subnet, dhcp and
// uplinks fail the plan, before any host is touched; an interface the host
// lacks fails the apply with the host's message.
func TestAccNetwork_addressingValidation(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a", "host-b"}})
	net := func(body string) string {
		return c.ProviderHCL() + `
resource "kvm_network" "bad" {
  name = "bad"
` + body + `
}
`
	}
	steps := []resource.TestStep{}
	for _, tc := range []struct{ body, want string }{
		{`subnet = { cidr = "10.1.0.0/33" }`, `not an IPv4 CIDR`},
		{`subnet = { cidr = "10.1.0.5/24" }`, `host bits set; did you mean 10.1.0.0/24`},
		{`subnet = { cidr = "fd00::/64" }`, `only IPv4`},
		{`subnet = { cidr = "10.1.0.0/24", gateway = "10.2.0.1" }`, `gateway 10.2.0.1 is not a host address`},
		{`subnet = { cidr = "10.1.0.0/24", dns_servers = ["dns.example"] }`, `not an IPv4 address`},
		{`dhcp = true`, `DHCP Without Subnet`},
		{`hosts = ["host-a"]
  uplinks = { host-b = "eth1" }`, `(?s)Uplink Host Not In Network.*host-b`},
		{`uplinks = { host-a = "eth1/2" }`, `Invalid Interface Name`},
		// Interfaces that can never be an uplink are refused at plan time,
		// with the reason, before any host is asked.
		{`uplinks = { host-a = "vnet3" }`, `(?s)Interface Cannot Be an Uplink.*"vnet3" is reserved.*"vnet"`},
		{`uplinks = { host-a = "lo" }`, `(?s)Interface Cannot Be an Uplink.*loopback`},
		{`uplinks = { host-a = "kvm-lan" }`, `(?s)Interface Cannot Be an Uplink.*"kvm-lan" is reserved.*"kvm-"`},
		{`uplinks = { host-a = "kt-0123abcd" }`, `(?s)Interface Cannot Be an Uplink.*"kt-0123abcd" is reserved.*"kt-"`},
		{`uplinks = { host-a = "ovs-system" }`, `(?s)Interface Cannot Be an Uplink.*"ovs-system" is reserved`},
		{`subnet = { cidr = "10.1.0.0/30", gateway = "10.1.0.1" }
  dhcp = true`, `too small for 2 DHCP servers`},
	} {
		steps = append(steps, resource.TestStep{Config: net(tc.body), PlanOnly: true, ExpectError: regexp.MustCompile(tc.want)})
	}
	steps = append(steps, resource.TestStep{
		Config:      net(`uplinks = { host-a = "kvmnone0" }`),
		ExpectError: regexp.MustCompile(`(?s)host-a.*no network interface "kvmnone0"`),
	})
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps:                    steps,
	})
}
