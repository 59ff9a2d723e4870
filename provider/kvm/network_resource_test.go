package kvm

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

func overlayHosts() harness.Options {
	return harness.Options{
		Hosts:     []string{"host-a", "host-b"},
		TunnelIPs: map[string]string{"host-a": "192.0.2.11", "host-b": "192.0.2.12"},
	}
}

func hostClient(t *testing.T, c *harness.Cluster, name string) *client.Client {
	t.Helper()
	h := c.Host(name)
	cl, err := client.New(client.Options{Endpoint: h.URL, Token: c.Token})
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// testAccCheckNetworkGone checks that no host has the network any more.
func testAccCheckNetworkGone(t *testing.T, c *harness.Cluster, name string) resource.TestCheckFunc {
	return func(*terraform.State) error {
		for _, h := range c.Hosts {
			nets, err := hostClient(t, c, h.Name).ListNetworks(context.Background())
			if err != nil {
				return err
			}
			for _, n := range nets {
				if n.Name == name {
					return fmt.Errorf("network %s still exists on %s", name, h.Name)
				}
			}
		}
		return nil
	}
}

func TestAccNetwork_vlanAndOverlay(t *testing.T) {
	c := startHosts(t, overlayHosts())
	cfg := c.ProviderHCL() + `
resource "kvm_network" "vlan" {
  name = "prod-vlan"
  vlan = 120
  mtu  = 1500
}
resource "kvm_network" "overlay" {
  name    = "tenant-1"
  overlay = "vxlan"
  vni     = 5001
  mtu     = 1450
}
`
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy: resource.ComposeTestCheckFunc(
			testAccCheckNetworkGone(t, c, "prod-vlan"), testAccCheckNetworkGone(t, c, "tenant-1")),
		Steps: []resource.TestStep{
			{
				Config: cfg,
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_network.vlan", tfjsonpath.New("id"), knownvalue.StringExact("prod-vlan")),
					statecheck.ExpectKnownValue("kvm_network.vlan", tfjsonpath.New("bridge"), knownvalue.StringExact(api.BridgeName("prod-vlan"))),
					statecheck.ExpectKnownValue("kvm_network.vlan", tfjsonpath.New("hosts"), knownvalue.SetExact([]knownvalue.Check{
						knownvalue.StringExact("host-a"), knownvalue.StringExact("host-b")})),
					statecheck.ExpectKnownValue("kvm_network.overlay", tfjsonpath.New("host_status"), knownvalue.MapExact(map[string]knownvalue.Check{
						"host-a": knownvalue.StringExact("ready"), "host-b": knownvalue.StringExact("ready")})),
				},
				Check: func(*terraform.State) error {
					// Each host has one tunnel, to the other host's tunnel IP.
					for self, peer := range map[string]string{"host-a": "192.0.2.12", "host-b": "192.0.2.11"} {
						n, err := hostClient(t, c, self).GetNetwork(context.Background(), "tenant-1")
						if err != nil {
							return err
						}
						if len(n.Tunnels) != 1 || n.Tunnels[0].RemoteIP != peer || n.VNI != 5001 || n.Overlay != "vxlan" {
							return fmt.Errorf("%s: network %+v, want one vxlan tunnel to %s with vni 5001", self, n, peer)
						}
						v, err := hostClient(t, c, self).GetNetwork(context.Background(), "prod-vlan")
						if err != nil {
							return err
						}
						if v.VLAN != 120 || v.MTU != 1500 {
							return fmt.Errorf("%s: vlan network %+v", self, v)
						}
					}
					return nil
				},
			},
			{
				ResourceName:            "kvm_network.overlay",
				ImportState:             true,
				ImportStateId:           "tenant-1",
				ImportStateVerify:       true,
				ImportStateVerifyIgnore: []string{"timeouts"},
			},
			{
				// Shrinking the network to one host removes exactly its
				// bridge and the tunnel to it.
				Config: c.ProviderHCL() + `
resource "kvm_network" "overlay" {
  name    = "tenant-1"
  hosts   = ["host-a"]
  overlay = "vxlan"
  vni     = 5001
  mtu     = 1450
}
`,
				Check: func(*terraform.State) error {
					if _, err := hostClient(t, c, "host-b").GetNetwork(context.Background(), "tenant-1"); !api.IsNotFound(err) {
						return fmt.Errorf("host-b still has tenant-1 (err %v)", err)
					}
					n, err := hostClient(t, c, "host-a").GetNetwork(context.Background(), "tenant-1")
					if err != nil {
						return err
					}
					if len(n.Tunnels) != 0 {
						return fmt.Errorf("host-a kept tunnels %+v", n.Tunnels)
					}
					return nil
				},
			},
		},
	})
}

// A bridge deleted out of band is a planned change, and apply repairs it.
func TestAccNetwork_disappearsOnOneHost(t *testing.T) {
	c := startHosts(t, overlayHosts())
	cfg := c.ProviderHCL() + `
resource "kvm_network" "n" {
  name    = "drifty"
  overlay = "geneve"
  vni     = 77
}
`
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config: cfg,
				Check: func(*terraform.State) error {
					return hostClient(t, c, "host-b").DeleteNetwork(context.Background(), "drifty")
				},
				ExpectNonEmptyPlan: true,
			},
			{
				Config: cfg,
				Check: func(*terraform.State) error {
					_, err := hostClient(t, c, "host-b").GetNetwork(context.Background(), "drifty")
					return err
				},
			},
		},
	})
}

func TestAccNetwork_badInput(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}})
	cases := map[string]string{
		`name = "n1"` + "\n" + `vlan = 0`:                                    `vlan.*between 1 and 4094`,
		`name = "n1"` + "\n" + `vlan = 4095`:                                 `vlan.*between 1 and 4094`,
		`name = "n1"` + "\n" + `overlay = "vxlan"` + "\n" + `vni = 16777216`: `vni.*between 1 and 16777215`,
		`name = "n1"` + "\n" + `overlay = "vxlan"`:                           `Missing VNI`,
		`name = "n1"` + "\n" + `overlay = "gre"` + "\n" + `vni = 1`:          `overlay.*value must be one of`,
		`name = "a/b"`: `invalid`,
		`name = "a b"`: `invalid`,
		`name = "n1"` + "\n" + `hosts = ["nope"]`: `Unknown Hosts`,
	}
	for body, want := range cases {
		resource.Test(t, resource.TestCase{
			ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
			Steps: []resource.TestStep{{
				Config:      c.ProviderHCL() + "resource \"kvm_network\" \"n\" {\n" + body + "\n}\n",
				ExpectError: regexp.MustCompile(`(?s)` + want),
			}},
		})
	}
	nets, err := hostClient(t, c, "host-a").ListNetworks(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(nets) != 0 {
		t.Fatalf("bad input created networks: %+v", nets)
	}
}

// VMs on both hosts with a NIC on each of two networks: the embedded OVSDB
// records one tagged port per NIC, and destroy leaves no row behind.
func TestAccNetwork_vmsWithTwoNICs(t *testing.T) {
	c := startHosts(t, overlayHosts())
	cfg := c.ProviderHCL() + `
resource "kvm_network" "vlan" {
  name = "nic-vlan"
  vlan = 30
}
resource "kvm_network" "overlay" {
  name    = "nic-overlay"
  overlay = "vxlan"
  vni     = 9
}
locals {
  hosts = ["host-a", "host-b"]
}
resource "kvm_disk" "root" {
  count    = 2
  name     = "nic-root"
  host     = local.hosts[count.index]
  size_mib = 16
}
resource "kvm_vm" "vm" {
  count      = 2
  name       = "nic-vm"
  host       = local.hosts[count.index]
  vcpu       = 1
  memory_mib = 64
  disks      = [{ disk_id = kvm_disk.root[count.index].id }]
  network_interfaces = [
    { network = kvm_network.vlan.name },
    { network = kvm_network.overlay.name, mac = "52:54:00:00:09:0${count.index + 1}" },
  ]
  shutdown_timeout = 0
}
`
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy: resource.ComposeTestCheckFunc(
			testAccCheckNetworkGone(t, c, "nic-vlan"), testAccCheckNetworkGone(t, c, "nic-overlay")),
		Steps: []resource.TestStep{
			{
				Config: cfg,
				Check: func(*terraform.State) error {
					for _, h := range []string{"host-a", "host-b"} {
						cl := hostClient(t, c, h)
						vm, err := cl.GetVM(context.Background(), "nic-vm")
						if err != nil {
							return err
						}
						if len(vm.Interfaces) != 2 || vm.Interfaces[0].MAC == "" || vm.Interfaces[0].VLAN != 30 || vm.Interfaces[1].Network != "nic-overlay" {
							return fmt.Errorf("%s: interfaces %+v", h, vm.Interfaces)
						}
						for _, n := range []string{"nic-vlan", "nic-overlay"} {
							net, err := cl.GetNetwork(context.Background(), n)
							if err != nil {
								return err
							}
							if len(net.Ports) != 1 {
								return fmt.Errorf("%s: network %s has ports %v, want the VM's one", h, n, net.Ports)
							}
						}
						// A network a VM still uses cannot be deleted: the
						// host names the VM and keeps the network.
						err = cl.DeleteNetwork(context.Background(), "nic-vlan")
						if client.StatusOf(err) != 409 || !strings.Contains(err.Error(), "nic-vm") {
							return fmt.Errorf("%s: deleting a network in use: %v, want 409 naming nic-vm", h, err)
						}
					}
					return nil
				},
			},
		},
	})
}

// A network spanning a host that is down fails naming that host and what
// was left; once the host is back, applying again converges.
func TestAccNetwork_partialFailureConverges(t *testing.T) {
	c := startHosts(t, overlayHosts())
	cfg := `
provider "kvm" {}
resource "kvm_network" "n" {
  name = "partial"
  vlan = 12
}
`
	t.Setenv("KVM_TOKEN", c.Token)
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy:             testAccCheckNetworkGone(t, c, "partial"),
		Steps: []resource.TestStep{
			{
				PreConfig: func() {
					t.Setenv("KVM_HOSTS", c.KVMHosts())
					if err := c.Host("host-b").Stop(); err != nil {
						t.Fatal(err)
					}
				},
				Config:      cfg,
				ExpectError: regexp.MustCompile(`(?s)failed on 1 of 2 hosts:.*host-b:.*succeeded on host-a`),
			},
			{
				PreConfig: func() {
					if err := c.Host("host-b").Start(); err != nil {
						t.Fatal(err)
					}
					// host-b listens on a new port after its restart.
					t.Setenv("KVM_HOSTS", c.KVMHosts())
				},
				Config: cfg,
				Check: func(*terraform.State) error {
					for _, h := range []string{"host-a", "host-b"} {
						n, err := hostClient(t, c, h).GetNetwork(context.Background(), "partial")
						if err != nil {
							return fmt.Errorf("%s: %w", h, err)
						}
						if n.VLAN != 12 {
							return fmt.Errorf("%s: vlan %d", h, n.VLAN)
						}
					}
					return nil
				},
			},
		},
	})
}

// port_security defaults to true, turns off in place, reads back from
// every host, imports, and an out-of-band change is drift.
func TestAccNetwork_portSecurity(t *testing.T) {
	c := startHosts(t, overlayHosts())
	cfg := func(attr string) string {
		return c.ProviderHCL() + `
resource "kvm_network" "ps" {
  name = "guarded"
  ` + attr + `
}
`
	}
	onHosts := func(want bool) resource.TestCheckFunc {
		return func(*terraform.State) error {
			for _, h := range []string{"host-a", "host-b"} {
				n, err := hostClient(t, c, h).GetNetwork(context.Background(), "guarded")
				if err != nil {
					return err
				}
				if n.PortSecurity != want {
					return fmt.Errorf("%s: port_security %t, want %t", h, n.PortSecurity, want)
				}
			}
			return nil
		}
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy:             testAccCheckNetworkGone(t, c, "guarded"),
		Steps: []resource.TestStep{
			{
				Config: cfg(""),
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_network.ps", tfjsonpath.New("port_security"), knownvalue.Bool(true)),
				},
				Check: onHosts(true),
			},
			{
				Config: cfg("port_security = false"),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_network.ps", plancheck.ResourceActionUpdate),
				}},
				ConfigStateChecks: []statecheck.StateCheck{
					statecheck.ExpectKnownValue("kvm_network.ps", tfjsonpath.New("port_security"), knownvalue.Bool(false)),
				},
				Check: onHosts(false),
			},
			{
				ResourceName:            "kvm_network.ps",
				ImportState:             true,
				ImportStateId:           "guarded",
				ImportStateVerify:       true,
				ImportStateVerifyIgnore: []string{"timeouts"},
			},
			{
				// Turned back on behind Terraform's back on one host.
				Config: cfg("port_security = false"),
				Check: func(*terraform.State) error {
					_, err := hostClient(t, c, "host-b").PutNetwork(context.Background(), "guarded", api.NetworkSpec{PortSecurity: new(true)})
					return err
				},
				ExpectNonEmptyPlan: true,
			},
			{
				Config: cfg("port_security = false"),
				Check:  onHosts(false),
			},
			{
				// Removing the attribute means the default again.
				Config: cfg(""),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("kvm_network.ps", plancheck.ResourceActionUpdate),
				}},
				Check: onHosts(true),
			},
		},
	})
}
