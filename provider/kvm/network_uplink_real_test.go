package kvm

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/terraform"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

// uplinkSwitch is the "physical switch" of the uplink test: a Linux
// bridge in the root namespace (it forwards 802.1Q-tagged frames as they
// are) with one veth pair per host, whose inner end up0 is the host's
// uplink interface.
const (
	uplinkSwitch = "kvmtup0"
	uplinkIface  = "up0"
)

func rootRun(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// realUplinkWire gives host h an interface up0 cabled to the switch.
func realUplinkWire(h *realstack.NSHost) error {
	outer := "kvmu-" + h.Key
	for _, args := range [][]string{
		{"link", "add", outer, "type", "veth", "peer", "name", uplinkIface, "netns", h.Netns},
		{"link", "set", outer, "master", uplinkSwitch},
		{"link", "set", outer, "up"},
	} {
		if err := rootRun("ip", args...); err != nil {
			return err
		}
	}
	for _, args := range [][]string{
		{"ip", "link", "set", uplinkIface, "up"},
		// Answer ARP only on the interface that holds the address, so
		// a frame that leaked into the wrong VLAN would be answered there.
		{"sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1"},
	} {
		if _, err := realNetRun(h, args[0], args[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// realVLANEndpoint plugs a VM stand-in into network's bridge on host h:
// an OVS internal port tagged with the network's VLAN, as a VM's port is,
// carrying addr. Its external_ids make the host remove it with the network.
func realVLANEndpoint(h *realstack.NSHost, network string, vlan int, port, addr string) error {
	if _, err := h.OVS.Vsctl("--timeout=30", "add-port", api.BridgeName(network), port, fmt.Sprintf("tag=%d", vlan), "--",
		"set", "Interface", port, "type=internal", "--",
		"set", "Port", port, "external_ids:kvm-hostd-owned=true", "external_ids:kvm-network="+network); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := realNetRun(h, "ip", "link", "set", port, "up")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, err := realNetRun(h, "ip", "addr", "add", addr, "dev", port)
	return err
}

// TestAccNetworkReal_uplinkVLANs: two VLAN networks share one uplink
// interface on each of two hosts (each with its own Open vSwitch, in its
// own network namespace), cabled to one switch. Frames cross the switch
// tagged with their network's VLAN: endpoints of one network reach each
// other across hosts, and not the other network's. A patch port deleted
// out of band shows in the plan and apply repairs it; destroy releases
// the interface.
func TestAccNetworkReal_uplinkVLANs(t *testing.T) {
	realstack.Require(t, "ovs-vsctl", "ovs-appctl", "ovsdb-server", "ovs-vswitchd", "libvirtd", "nsenter", "ip", "sysctl")
	testAccPreCheck(t)
	parallelNSHostTest(t)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	hs := realstack.StartHostNamespaces(ctx, t, realstack.HostsOptions{Names: []string{"a", "b"}, OVS: true})
	_ = rootRun("ip", "link", "del", uplinkSwitch) // left by a crashed run
	if err := rootRun("ip", "link", "add", uplinkSwitch, "type", "bridge"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rootRun("ip", "link", "del", uplinkSwitch) })
	if err := rootRun("ip", "link", "set", uplinkSwitch, "up"); err != nil {
		t.Fatal(err)
	}

	hosts := []realNet{{host: "host-a", ns: hs.Host("a")}, {host: "host-b", ns: hs.Host("b")}}
	byHost := map[string]*realstack.NSHost{}
	opts := harness.Options{
		Hosts:         []string{"host-a", "host-b"},
		ListenIPs:     map[string]string{},
		ExtraHostArgs: map[string][]string{},
		LibvirtURI:    "test:///default", // no VMs: the switch is what is tested
		Wrap: func(host string, argv []string) *exec.Cmd {
			return byHost[host].Command(argv[0], argv[1:]...)
		},
	}
	for _, n := range hosts {
		if err := realUplinkWire(n.ns); err != nil {
			t.Fatalf("uplink cable of %s: %v", n.host, err)
		}
		byHost[n.host] = n.ns
		opts.ListenIPs[n.host] = n.ns.IP
		opts.ExtraHostArgs[n.host] = []string{"--ovsdb", n.ns.OVS.Endpoint}
	}
	c := startHosts(t, opts)
	t.Logf("hosts up in %s", time.Since(start).Round(time.Millisecond))

	cfg := c.ProviderHCL() + `
resource "kvm_network" "u100" {
  name    = "u100"
  vlan    = 100
  uplinks = { host-a = "up0", host-b = "up0" }
}
resource "kvm_network" "u200" {
  name    = "u200"
  vlan    = 200
  uplinks = { host-a = "up0", host-b = "up0" }
}
`
	a, b := hosts[0], hosts[1]
	ping := func(from realNet, src, dst string) error {
		if !harness.Wait(ctx, 15*time.Second, func() bool {
			_, err := realNetPingN(from.ns, src, dst, 1, time.Second)
			return err == nil
		}) {
			return fmt.Errorf("no echo %s -> %s from %s in 15s\n%s", src, dst, from.host, realNetDiag(hosts))
		}
		out, err := realNetPing(from.ns, src, dst)
		if err != nil {
			return fmt.Errorf("%v\n%s", err, out)
		}
		t.Log(out)
		return nil
	}

	checkWiring := func(*terraform.State) error {
		ub := api.UplinkBridgeName(uplinkIface)
		for _, n := range hosts {
			// The interface is a port of the uplink bridge, as a trunk.
			if br, err := n.ns.OVS.Vsctl("port-to-br", uplinkIface); err != nil || strings.TrimSpace(br) != ub {
				return fmt.Errorf("%s: %s is on bridge %q (%v), want %s", n.host, uplinkIface, strings.TrimSpace(br), err, ub)
			}
			for net, vlan := range map[string]string{"u100": "100", "u200": "200"} {
				_, up := api.UplinkPatchNames(net)
				out, err := n.ns.OVS.Vsctl("get", "Port", up, "trunks")
				if err != nil || strings.TrimSpace(out) != "["+vlan+"]" {
					return fmt.Errorf("%s: %s trunks %q (%v), want [%s]", n.host, up, strings.TrimSpace(out), err, vlan)
				}
			}
		}
		return nil
	}

	checkTraffic := func(*terraform.State) error {
		for _, ep := range []struct {
			h          realNet
			net        string
			vlan       int
			port, addr string
		}{
			{a, "u100", 100, "e100", "192.168.50.1/24"},
			{b, "u100", 100, "e100", "192.168.50.2/24"},
			{a, "u200", 200, "e200", "192.168.60.1/24"},
			{b, "u200", 200, "e200", "192.168.60.2/24"},
			// On VLAN 200, an address of u100's IP subnet: reachable
			// from u100 only if frames leaked between the VLANs.
			{b, "u200", 200, "x200", "192.168.50.3/32"},
		} {
			if err := realVLANEndpoint(ep.h.ns, ep.net, ep.vlan, ep.port, ep.addr); err != nil {
				return err
			}
		}
		if err := ping(a, "192.168.50.1", "192.168.50.2"); err != nil {
			return fmt.Errorf("u100 across the uplink: %w", err)
		}
		if err := ping(a, "192.168.60.1", "192.168.60.2"); err != nil {
			return fmt.Errorf("u200 across the uplink: %w", err)
		}
		if out, err := realNetPingN(a.ns, "192.168.50.1", "192.168.50.3", 2, time.Second); err == nil {
			return fmt.Errorf("u100 reaches an endpoint on u200 (VLANs leak):\n%s", out)
		}
		// The frames left host a tagged with their VLAN, through up0.
		out, err := realNetAppctl(a.ns, "dpctl/dump-flows")
		if err != nil {
			return err
		}
		for _, vid := range []string{"100", "200"} {
			if !strings.Contains(out, "push_vlan(vid="+vid) {
				return fmt.Errorf("host a: no datapath flow tags VLAN %s towards the uplink:\n%s", vid, out)
			}
		}
		return nil
	}

	_, upSide := api.UplinkPatchNames("u100")
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		CheckDestroy: func(*terraform.State) error {
			for _, n := range hosts {
				if _, err := n.ns.OVS.Vsctl("br-exists", api.UplinkBridgeName(uplinkIface)); err == nil {
					return fmt.Errorf("%s: uplink bridge still exists after destroy", n.host)
				}
				if br, err := n.ns.OVS.Vsctl("port-to-br", uplinkIface); err == nil {
					return fmt.Errorf("%s: %s is still a port of %s after destroy", n.host, uplinkIface, br)
				}
			}
			return nil
		},
		Steps: []resource.TestStep{
			{
				Config: cfg,
				Check:  resource.ComposeTestCheckFunc(checkWiring, checkTraffic),
			},
			{
				// Drift: u100's patch port deleted on host b cuts it off
				// and shows in the plan ...
				PreConfig: func() {
					if _, err := b.ns.OVS.Vsctl("del-port", api.UplinkBridgeName(uplinkIface), upSide); err != nil {
						t.Fatal(err)
					}
					if out, err := realNetPingN(a.ns, "192.168.50.1", "192.168.50.2", 2, time.Second); err == nil {
						t.Fatalf("u100 still crosses without host b's patch port:\n%s", out)
					}
				},
				Config:             cfg,
				PlanOnly:           true,
				ExpectNonEmptyPlan: true,
			},
			{
				// ... and apply repairs it.
				Config: cfg,
				Check: resource.ComposeTestCheckFunc(checkWiring, func(*terraform.State) error {
					return ping(a, "192.168.50.1", "192.168.50.2")
				}),
			},
		},
	})
	t.Logf("total %s", time.Since(start).Round(time.Millisecond))
}
