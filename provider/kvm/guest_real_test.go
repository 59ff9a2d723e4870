package kvm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/statecheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/hashicorp/terraform-plugin-testing/tfjsonpath"
	"golang.org/x/crypto/ssh"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/guestimage"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

// The guests' segment: one VXLAN kvm_network across both hosts. The test
// reaches it through a port on host-a's bridge (guestProbeIP).
const (
	guestNetwork = "glan"
	guestVNI     = 5020
	guestMTU     = 1450 // 1500 on the underlay, less the VXLAN header
	guestSubnet  = "10.20.0.0/24"
	// vm2's second NIC is on a network of host-b alone where kvm-hostd
	// serves DHCP: the guest's own DHCP client takes its address there.
	guestDHCPNetwork = "gdhcp"
	guestDHCPSubnet  = "10.21.0.0/24"
	guestDHCPMAC     = "52:54:00:21:00:12"
	guestProbeIP     = "10.20.0.250"
	guestBaseMiB     = 2048 // the image's virtual size
	guestGrownMiB    = 2304
	// guestWriteBps is the write_bytes_sec the iotune step sets: low enough
	// that under TCG the throttle, not the emulated CPU, limits dd (the
	// step measures the unthrottled rate first and says so).
	guestWriteBps = 4 << 20
	guestDDMiB    = 24
)

// guestVM is one guest of the test: its static address and where it runs.
// The guests get the network's MTU (guestMTU) from their virtio NIC, and
// checksum their own packets (kvm-hostd offers no checksum offload on a
// userspace-datapath bridge): the SSH sessions and every TCP check below
// depend on both, without anything in the guest's cloud-init for them.
type guestVM struct {
	name, hostname, mac, ip, file string
	host                          string // kvm-hostd host it runs on now
}

func (g *guestVM) userData(key guestKey) string {
	return fmt.Sprintf(`#cloud-config
users:
  - name: %s
    shell: /bin/bash
    lock_passwd: true
    ssh_authorized_keys:
      - %s
write_files:
  - path: /etc/kvm-proof
    permissions: "0644"
    content: |
      %s
`, guestUser, key.authorized, g.file)
}

func (g *guestVM) metaData() string {
	return fmt.Sprintf("instance-id: %s\nlocal-hostname: %s\n", g.name, g.hostname)
}

// guestConfig is what a step applies.
type guestConfig struct {
	vm1Host     string
	vm1RootMiB  int  // 0: the base's size
	writeBps    int  // vm1's root iotune.write_bytes_sec; 0: none
	snapshot    bool // a memory snapshot of vm1
	revert      string
	vm2Stopped  bool // vm2 running = false, with time for a graceful shutdown
	imageURL    string
	providerHCL string
}

func guestHCL(c guestConfig, vms []*guestVM, key guestKey) string {
	var b strings.Builder
	b.WriteString(c.providerHCL)
	fmt.Fprintf(&b, `
locals {
  vm1_host = %q
}

resource "kvm_network" "lan" {
  name    = %q
  overlay = "vxlan"
  vni     = %d
  mtu     = %d
  subnet  = { cidr = %q }
}

resource "kvm_network" "dhcp" {
  name   = %q
  hosts  = ["host-b"]
  subnet = { cidr = %q, dns_servers = ["10.21.0.53"] }
  dhcp   = true
}

# The guest image on both hosts, fetched by each host from the test's
# HTTP server: vm1's linked clone moves with it onto the other host's copy.
resource "kvm_disk" "base_a" {
  name       = "guest-base"
  host       = "host-a"
  format     = "qcow2"
  source_url = %q
}

resource "kvm_disk" "base_b" {
  name       = "guest-base"
  host       = "host-b"
  format     = "qcow2"
  source_url = %q
}
`, c.vm1Host, guestNetwork, guestVNI, guestMTU, guestSubnet, guestDHCPNetwork, guestDHCPSubnet, c.imageURL, c.imageURL)

	extra := ""
	if c.vm1RootMiB > 0 {
		extra += fmt.Sprintf("  size_mib     = %d\n", c.vm1RootMiB)
	}
	if c.writeBps > 0 {
		extra += fmt.Sprintf("  iotune       = { write_bytes_sec = %d }\n", c.writeBps)
	}
	fmt.Fprintf(&b, `
resource "kvm_disk" "vm1_root" {
  name         = "vm1-root"
  host         = local.vm1_host
  base_disk_id = local.vm1_host == "host-a" ? kvm_disk.base_a.id : kvm_disk.base_b.id
%s}

resource "kvm_disk" "vm2_root" {
  name         = "vm2-root"
  host         = "host-b"
  base_disk_id = kvm_disk.base_b.id
}
`, extra)
	for i, g := range vms {
		host := `local.vm1_host`
		if i > 0 {
			host = strconv.Quote(g.host)
		}
		// Destroy powers the guests off at once; the last step stops vm2
		// the way a user would, through an ACPI shutdown.
		// vm2 also gets a NIC without a static address on the DHCP
		// network: the generated network-config has the guest ask DHCP.
		dhcpNIC := ""
		if i > 0 {
			dhcpNIC = fmt.Sprintf(`, {
    network = kvm_network.dhcp.name
    mac     = %q
  }`, guestDHCPMAC)
		}
		power := "shutdown_timeout = 0"
		if i > 0 && c.vm2Stopped {
			power = "shutdown_timeout = 120\n  running          = false"
		}
		fmt.Fprintf(&b, `
resource "kvm_vm" %q {
  name             = %q
  host             = %s
  vcpu             = 1
  memory_mib       = 384
  %s
  disks            = [{ disk_id = kvm_disk.%s_root.id }]
  network_interfaces = [{
    network      = kvm_network.lan.name
    mac          = %q
    ipv4_address = %q
  }%s]
  # The static address reaches the guest through the network-config the
  # host generates from ipv4_address.
  cloud_init = {
    user_data = %q
    meta_data = %q
  }
  # Create and update wait until the guest agent reports the address.
  wait_for_ip = { timeout = "12m" }
}
`, g.name, g.name, host, power, g.name, g.mac, g.ip, dhcpNIC, g.userData(key), g.metaData())
	}
	if c.snapshot {
		trigger := ""
		if c.revert != "" {
			trigger = fmt.Sprintf("  revert_trigger = %q\n", c.revert)
		}
		fmt.Fprintf(&b, `
resource "kvm_snapshot" "vm1" {
  vm_id          = "${kvm_vm.vm1.host}/${kvm_vm.vm1.name}"
  name           = "with-file-a"
  include_memory = true
%s}
`, trigger)
	}
	return b.String()
}

// TestAccGuestReal is issue 10's proof on the real stack with the guest
// image: two namespace hosts, each with its own libvirtd/QEMU and Open
// vSwitch, joined by a VXLAN kvm_network; a guest on each, booted from a
// linked clone of the image each host fetched itself, configured by
// cloud-init (hostname, SSH key, a file, a static address). The same two
// guests then carry every assertion, seen from inside over SSH: VM-to-VM
// ping across the tunnel (cut out of band, repaired by apply), five live
// migrations under a 100 ms ping and a memory workload in the guest
// (downtime; uptime, address, an open SSH session and every write of the
// workload survive), online disk grow, iotune, and a memory snapshot's
// revert.
func TestAccGuestReal(t *testing.T) {
	realstack.Require(t, "libvirtd", "virtlogd", "nsenter", "ip", "sysctl", "qemu-system-x86_64",
		"ovs-vsctl", "ovs-appctl", "ovsdb-server", "ovs-vswitchd")
	testAccPreCheck(t)
	parallelNSHostTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	start := time.Now()

	image, err := guestimage.Path(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("guest image %s (ready after %s)", image, time.Since(start).Round(time.Millisecond))
	key, err := newGuestKey()
	if err != nil {
		t.Fatal(err)
	}

	hs := realstack.StartHostNamespaces(ctx, t, realstack.HostsOptions{Names: []string{"a", "b"}, OVS: true})
	t.Logf("namespace hosts with OVS up in %s", time.Since(start).Round(time.Millisecond))

	// The image, served on the root bridge's address, which both hosts
	// reach over their underlay.
	imageURL := serveGuestImage(t, image)
	gateway := hostsGateway

	hostsNet := []realNet{{host: "host-a", ns: hs.Host("a")}, {host: "host-b", ns: hs.Host("b")}}
	byHost := map[string]*realstack.NSHost{"host-a": hs.Host("a"), "host-b": hs.Host("b")}
	const poolDir = "/var/lib/libvirt/images/kvm-guest-test"
	opts := harness.Options{
		Hosts:         []string{"host-a", "host-b"},
		LibvirtURI:    "qemu:///system", // the host's own libvirtd, inside its namespaces
		OVSDB:         "embedded",       // replaced per host below by the host's own OVS
		TunnelIPs:     map[string]string{},
		ListenIPs:     map[string]string{},
		ExtraHostArgs: map[string][]string{},
		PoolDirs:      map[string]string{},
		Wrap: func(host string, argv []string) *exec.Cmd {
			return byHost[host].Command(argv[0], argv[1:]...)
		},
	}
	for _, n := range hostsNet {
		if err := realNetUnderlay(n.ns, gateway); err != nil {
			t.Fatalf("underlay on %s: %v\n%s", n.host, err, realNetDiag(hostsNet))
		}
		opts.TunnelIPs[n.host] = n.ns.IP
		opts.ListenIPs[n.host] = n.ns.IP
		opts.PoolDirs[n.host] = poolDir
		opts.ExtraHostArgs[n.host] = []string{
			"--ovsdb", n.ns.OVS.Endpoint,
			"--migration-uri", n.ns.URI,
			"--fetch-allow", realstack.DefaultHostSubnet + ".0/24",
		}
	}
	c := startHosts(t, opts)
	clB := testAccVMClient(t, c, "host-b")
	t.Logf("kvm-hostd up on both hosts after %s", time.Since(start).Round(time.Millisecond))

	vm1 := &guestVM{name: "vm1", hostname: "guest-vm1", mac: "52:54:00:20:00:11", ip: "10.20.0.11", host: "host-a",
		file: "written by cloud-init on vm1"}
	vm2 := &guestVM{name: "vm2", hostname: "guest-vm2", mac: "52:54:00:20:00:12", ip: "10.20.0.12", host: "host-b",
		file: "written by cloud-init on vm2"}
	vms := []*guestVM{vm1, vm2}
	probe := hs.Host("a") // the test's port on the segment is on host-a
	cfg := guestConfig{vm1Host: "host-a", imageURL: imageURL, providerHCL: c.ProviderHCL()}
	hcl := func(mod func(*guestConfig)) string {
		cc := cfg
		if mod != nil {
			mod(&cc)
		}
		return guestHCL(cc, vms, key)
	}

	// One SSH client per guest, re-dialled when it broke.
	var mu sync.Mutex
	clients := map[string]*ssh.Client{}
	sshTo := func(g *guestVM) (*ssh.Client, error) {
		mu.Lock()
		defer mu.Unlock()
		if cl := clients[g.name]; cl != nil {
			if _, _, err := cl.SendRequest("keepalive@openssh.com", true, nil); err == nil {
				return cl, nil
			}
			_ = cl.Close()
			delete(clients, g.name)
		}
		cl, err := guestConnect(probe, g.ip, key)
		if err != nil {
			return nil, err
		}
		clients[g.name] = cl
		return cl, nil
	}
	dropSSH := func(g *guestVM) {
		mu.Lock()
		defer mu.Unlock()
		if cl := clients[g.name]; cl != nil {
			_ = cl.Close()
			delete(clients, g.name)
		}
	}
	t.Cleanup(func() {
		for _, g := range vms {
			dropSSH(g)
		}
	})
	run := func(g *guestVM, cmd string) (string, error) {
		cl, err := sshTo(g)
		if err != nil {
			return "", fmt.Errorf("ssh %s@%s: %w", guestUser, g.ip, err)
		}
		out, err := guestRun(cl, cmd, 2*time.Minute)
		if err != nil {
			return out, fmt.Errorf("on %s: %w", g.name, err)
		}
		return out, nil
	}
	pingFrom := func(from, to *guestVM) error {
		_, err := run(from, fmt.Sprintf("ping -c 3 -W 2 %s", to.ip))
		return err
	}

	// Step 1: both guests boot; everything cloud-init was given is read
	// back from inside.
	checkBoot := func(st *terraform.State) error {
		applied := time.Now()
		t.Logf("step 1 (create): applied %s after the test started", applied.Sub(start).Round(time.Second))
		// wait_for_ip: the apply returned once the guest agents reported
		// the addresses, which are in state.
		for _, g := range vms {
			qs, err := guestQEMUStart(byHost[g.host], g.name)
			if err != nil {
				return err
			}
			if err := guestAddressesInState(st, g); err != nil {
				return err
			}
			t.Logf("%s: boot to IP: wait_for_ip returned with %s in state %s after QEMU started", g.name, g.ip, applied.Sub(qs).Round(100*time.Millisecond))
		}
		if err := realNetEndpoint(probe, api.BridgeName(guestNetwork), guestNetwork, guestProbeIP+"/24"); err != nil {
			return err
		}
		for _, args := range [][]string{{"link", "set", "p0", "mtu", strconv.Itoa(guestMTU)}, {"link", "set", "p0-br", "mtu", strconv.Itoa(guestMTU)}} {
			if _, err := realNetRun(probe, "ip", args...); err != nil {
				return err
			}
		}
		var wg sync.WaitGroup
		errs := make([]error, len(vms))
		for i, g := range vms {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = waitGuest(ctx, t, byHost[g.host], probe, g, run)
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				return fmt.Errorf("%w\n%s\n%s", err, guestConsole(byHost[vms[i].host], vms[i].name), realNetDiag(hostsNet))
			}
		}
		for _, g := range vms {
			host, err := run(g, "hostname")
			if err != nil {
				return err
			}
			if strings.TrimSpace(host) != g.hostname {
				return fmt.Errorf("%s: hostname %q, want %q (meta-data local-hostname)", g.name, strings.TrimSpace(host), g.hostname)
			}
			file, err := run(g, "cat /etc/kvm-proof")
			if err != nil {
				return err
			}
			if strings.TrimSpace(file) != g.file {
				return fmt.Errorf("%s: /etc/kvm-proof %q, want %q (user_data write_files)", g.name, file, g.file)
			}
			addr, err := run(g, "ip -4 -o addr show dev eth0")
			if err != nil {
				return err
			}
			if !strings.Contains(addr, "inet "+g.ip+"/24") {
				return fmt.Errorf("%s: eth0 has %q, want %s/24 (network_config)", g.name, addr, g.ip)
			}
			mtu, err := run(g, "cat /sys/class/net/eth0/mtu")
			if err != nil {
				return err
			}
			if strings.TrimSpace(mtu) != strconv.Itoa(guestMTU) {
				return fmt.Errorf("%s: eth0 MTU %s, want the network's %d (announced by the virtio NIC)", g.name, strings.TrimSpace(mtu), guestMTU)
			}
			whoami, err := run(g, "id -un")
			if err != nil {
				return err
			}
			t.Logf("%s: logged in as %s with the generated key; hostname %s; /etc/kvm-proof %q; %s",
				g.name, strings.TrimSpace(whoami), strings.TrimSpace(host), strings.TrimSpace(file), strings.Join(strings.Fields(strings.ReplaceAll(addr, `\`, "")), " "))
		}
		// DHCP from kvm-hostd, taken by the guest's own client: vm2's
		// second NIC holds the address host-b reserved for its MAC, as a
		// lease (dynamic), and the state reports it.
		var leased string
		if n, err := clB.GetNetwork(ctx, guestDHCPNetwork); err != nil {
			return err
		} else {
			for _, l := range n.Leases {
				if strings.EqualFold(l.MAC, guestDHCPMAC) {
					leased = l.IP
				}
			}
			if leased == "" {
				return fmt.Errorf("host-b serves no DHCP binding for %s on %s: %+v", guestDHCPMAC, guestDHCPNetwork, n.Leases)
			}
		}
		eth1, err := run(vm2, "ip -4 -o addr show dev eth1")
		if err != nil {
			return err
		}
		if !strings.Contains(eth1, "inet "+leased+"/24") || !strings.Contains(eth1, "dynamic") {
			return fmt.Errorf("vm2: eth1 has %q, want %s/24 leased by DHCP (dynamic)", eth1, leased)
		}
		if got := st.RootModule().Resources["kvm_vm.vm2"].Primary.Attributes["network_interfaces.1.addresses.0"]; got != leased {
			return fmt.Errorf("kvm_vm.vm2: network_interfaces[1].addresses[0] = %q, want the DHCP lease %s", got, leased)
		}
		t.Logf("vm2: eth1 took %s from host-b's DHCP server: %s", leased, strings.Join(strings.Fields(strings.ReplaceAll(eth1, `\`, "")), " "))
		// VM to VM across the tunnel (vm1 on host-a, vm2 on host-b).
		for _, dir := range [][2]*guestVM{{vm1, vm2}, {vm2, vm1}} {
			if err := pingFrom(dir[0], dir[1]); err != nil {
				return fmt.Errorf("VM to VM across the overlay: %w\n%s", err, realNetDiag(hostsNet))
			}
			t.Logf("ping %s (%s) -> %s (%s) across the VXLAN tunnel: ok", dir[0].name, dir[0].host, dir[1].name, dir[1].host)
		}
		return nil
	}

	// Step 2: a tunnel deleted out of band cuts VM-to-VM traffic; apply
	// brings it back.
	cutTunnel := func() {
		port := api.TunnelPortName(guestNetwork, "host-a")
		if _, err := hs.Host("b").OVS.Vsctl("del-port", api.BridgeName(guestNetwork), port); err != nil {
			t.Fatal(err)
		}
		if err := pingFrom(vm1, vm2); err == nil {
			t.Fatalf("vm1 still reaches vm2 with host-b's tunnel %s deleted", port)
		}
		t.Logf("tunnel %s deleted on host-b: vm1 -> vm2 ping fails", port)
	}
	checkRepaired := func(*terraform.State) error {
		var err error
		if !harness.Wait(ctx, 30*time.Second, func() bool {
			err = pingFrom(vm1, vm2)
			return err == nil
		}) {
			return fmt.Errorf("after apply, vm1 still cannot reach vm2: %v\n%s", err, realNetDiag(hostsNet))
		}
		t.Logf("after apply: vm1 -> vm2 ping works again")
		return nil
	}

	// Steps 3-7: live migrations of vm1 under a 100 ms ping.
	type move struct {
		pinger  *pinger
		session *ssh.Client
		uptime  float64
		rounds  int // of the memory workload
		started time.Time
	}
	var cur move
	var downtimes []time.Duration
	memcheck := false
	totalMoves := 0 // set with the steps below
	var checkMove func(to string) error
	beginMove := func(to string) func() {
		return func() {
			cl, err := sshTo(vm1)
			if err != nil {
				t.Fatal(err)
			}
			up, err := guestUptime(cl)
			if err != nil {
				t.Fatal(err)
			}
			if !memcheck {
				// Load for every move: the guest rewrites 32 MiB
				// continuously and checks that no write is lost.
				if err := startGuestMemcheck(cl); err != nil {
					t.Fatalf("starting the memory workload in vm1: %v", err)
				}
				memcheck = true
			}
			rounds, err := guestMemcheckRounds(cl)
			if err != nil {
				t.Fatal(err)
			}
			p, err := startPinger(probe, guestProbeIP, vm1.ip, 100*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			cur = move{pinger: p, session: cl, uptime: up, rounds: rounds, started: time.Now()}
			t.Logf("moving vm1 %s -> %s (guest uptime %.1f s)", vm1.host, to, up)
		}
	}
	endMove := func(to string) resource.TestCheckFunc {
		return func(st *terraform.State) error {
			if err := checkMove(to); err != nil {
				return fmt.Errorf("%w\n%s", err, guestConsole(byHost[to], vm1.name))
			}
			return nil
		}
	}
	checkMove = func(to string) error {
		took := time.Since(cur.started)
		res := cur.pinger.Stop()
		from := vm1.host
		vm1.host = to
		down := time.Duration(res.Lost) * 100 * time.Millisecond
		downtimes = append(downtimes, down)
		t.Logf("move %d (%s -> %s): apply %s; ping every 100 ms: %s => downtime %s",
			len(downtimes), from, to, took.Round(100*time.Millisecond), res, down)
		// The SSH session opened before the move still works.
		out, err := guestRun(cur.session, "cat /proc/uptime; ip -4 -o addr show dev eth0", time.Minute)
		if err != nil {
			return fmt.Errorf("SSH session opened before the move: %w", err)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		up, _ := strconv.ParseFloat(strings.Fields(lines[0])[0], 64)
		if up <= cur.uptime {
			return fmt.Errorf("guest uptime %.1f s after the move, %.1f s before: it rebooted", up, cur.uptime)
		}
		if len(lines) < 2 || !strings.Contains(lines[1], "inet "+vm1.ip+"/24") {
			return fmt.Errorf("address after the move: %q", out)
		}
		if res.Lost > 0 && res.Lost == res.Sent {
			return fmt.Errorf("no ping answered during the move: %s", res)
		}
		rounds, err := guestMemcheckRounds(cur.session)
		if err != nil {
			return fmt.Errorf("after move %d: %w", len(downtimes), err)
		}
		if rounds <= cur.rounds {
			return fmt.Errorf("after move %d: the memory workload is stuck at round %d", len(downtimes), rounds)
		}
		t.Logf("after move %d: same SSH session answers, uptime %.1f -> %.1f s, address %s kept, memory workload intact (%d -> %d rounds over 32 MiB)",
			len(downtimes), cur.uptime, up, vm1.ip, cur.rounds, rounds)
		if len(downtimes) == totalMoves {
			// The workload keeps a host core busy; the rest of the
			// test does not need it.
			if _, err := guestRun(cur.session, "kill $(cat /tmp/memcheck.pid)", time.Minute); err != nil {
				return fmt.Errorf("stopping the memory workload: %w", err)
			}
		}
		if err := pingFrom(vm2, vm1); err != nil {
			return fmt.Errorf("vm2 -> vm1 after the move: %w", err)
		}
		return nil
	}
	moveStep := func(to string) resource.TestStep {
		return resource.TestStep{
			PreConfig: beginMove(to),
			Config:    hcl(func(c *guestConfig) { c.vm1Host = to }),
			ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
				plancheck.ExpectResourceAction("kvm_vm.vm1", plancheck.ResourceActionUpdate),
				plancheck.ExpectResourceAction("kvm_disk.vm1_root", plancheck.ResourceActionUpdate),
			}},
			ConfigStateChecks: []statecheck.StateCheck{
				statecheck.ExpectKnownValue("kvm_vm.vm1", tfjsonpath.New("host"), knownvalue.StringExact(to)),
				statecheck.ExpectKnownValue("kvm_vm.vm1", tfjsonpath.New("ipv4_address"), knownvalue.StringExact(vm1.ip)),
			},
			Check: endMove(to),
		}
	}

	// After the moves vm1 is on host-b; the remaining steps keep it there.
	const lastHost = "host-b"
	var uptimeBefore float64
	readUptime := func() {
		cl, err := sshTo(vm1)
		if err == nil {
			uptimeBefore, err = guestUptime(cl)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	checkNoReboot := func() error {
		cl, err := sshTo(vm1)
		if err != nil {
			return err
		}
		up, err := guestUptime(cl)
		if err != nil {
			return err
		}
		if up <= uptimeBefore {
			return fmt.Errorf("guest uptime %.1f s, %.1f s before: it rebooted", up, uptimeBefore)
		}
		return nil
	}

	// Step 8: online grow, seen by the guest's kernel.
	checkGrown := func(*terraform.State) error {
		out, err := run(vm1, "cat /sys/block/vda/size")
		if err != nil {
			return err
		}
		sectors, _ := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
		if want := int64(guestGrownMiB) << 11; sectors != want {
			return fmt.Errorf("guest's /sys/block/vda/size = %d sectors, want %d (%d MiB)", sectors, want, guestGrownMiB)
		}
		if err := checkNoReboot(); err != nil {
			return err
		}
		t.Logf("grow: guest sees vda = %d sectors (%d MiB) without a reboot", sectors, guestGrownMiB)
		return nil
	}

	// Step 9: iotune, measured by dd inside.
	dd := func() (float64, error) {
		out, err := run(vm1, fmt.Sprintf("dd if=/dev/zero of=$HOME/dd.bin bs=1M count=%d oflag=direct 2>&1; rm -f $HOME/dd.bin", guestDDMiB))
		if err != nil {
			return 0, err
		}
		m := regexp.MustCompile(`(\d+) bytes .* copied, ([0-9.]+) s`).FindStringSubmatch(out)
		if m == nil {
			return 0, fmt.Errorf("dd said %q", out)
		}
		bytes, _ := strconv.ParseFloat(m[1], 64)
		secs, _ := strconv.ParseFloat(m[2], 64)
		if secs <= 0 {
			return 0, fmt.Errorf("dd said %q", out)
		}
		return bytes / secs, nil
	}
	var ddFree float64
	measureFree := func() {
		var err error
		if ddFree, err = dd(); err != nil {
			t.Fatal(err)
		}
		t.Logf("iotune: unthrottled dd oflag=direct in the guest: %.1f MiB/s", ddFree/(1<<20))
	}
	checkThrottled := func(*terraform.State) error {
		rate, err := dd()
		if err != nil {
			return err
		}
		ratio := rate / guestWriteBps
		t.Logf("iotune: write_bytes_sec %d (%.1f MiB/s): dd measures %.2f MiB/s (%.0f%% of the limit; unthrottled %.1f MiB/s)",
			guestWriteBps, float64(guestWriteBps)/(1<<20), rate/(1<<20), ratio*100, ddFree/(1<<20))
		if ddFree < 1.5*guestWriteBps {
			return fmt.Errorf("unthrottled dd is only %.1f MiB/s: the limit would not be what limits it", ddFree/(1<<20))
		}
		if ratio < 0.8 || ratio > 1.2 {
			return fmt.Errorf("dd in the guest wrote %.2f MiB/s, not within 20%% of write_bytes_sec %.1f MiB/s", rate/(1<<20), float64(guestWriteBps)/(1<<20))
		}
		return nil
	}

	// Steps 10-11: file A before the memory snapshot, file B after; the
	// revert keeps A and loses B.
	const fileA, fileB = "/home/debian/before-snapshot", "/home/debian/after-snapshot"
	touch := func(path string) func() {
		return func() {
			if _, err := run(vm1, "echo kvm > "+path+" && sync"); err != nil {
				t.Fatal(err)
			}
		}
	}
	var revertAt time.Time
	var checkRevert func() error
	checkReverted := func(*terraform.State) error {
		if err := checkRevert(); err != nil {
			return fmt.Errorf("%w\n%s", err, guestConsole(byHost[lastHost], vm1.name))
		}
		return nil
	}
	checkRevert = func() error {
		// The guest's memory is the snapshot's: its TCP state no longer
		// matches the session's.
		dropSSH(vm1)
		var out string
		var err error
		if !harness.Wait(ctx, 2*time.Minute, func() bool {
			out, err = run(vm1, fmt.Sprintf("for f in %s %s; do if test -e $f; then echo $f: present; else echo $f: missing; fi; done", fileA, fileB))
			if err != nil {
				dropSSH(vm1)
			}
			return err == nil
		}) {
			return fmt.Errorf("no SSH to vm1 after the revert: %v", err)
		}
		if !strings.Contains(out, fileA+": present") || !strings.Contains(out, fileB+": missing") {
			return fmt.Errorf("after the revert: ls says %q; want %s present and %s gone", out, fileA, fileB)
		}
		t.Logf("revert (applied in %s): %s is there, %s is gone", time.Since(revertAt).Round(100*time.Millisecond), fileA, fileB)
		return nil
	}

	steps := []resource.TestStep{
		{
			Config: hcl(nil),
			ConfigStateChecks: []statecheck.StateCheck{
				statecheck.ExpectKnownValue("kvm_disk.base_a", tfjsonpath.New("size_mib"), knownvalue.Int64Exact(guestBaseMiB)),
				statecheck.ExpectKnownValue("kvm_disk.vm1_root", tfjsonpath.New("size_mib"), knownvalue.Int64Exact(guestBaseMiB)),
				statecheck.ExpectKnownValue("kvm_vm.vm1", tfjsonpath.New("state"), knownvalue.StringExact(api.StateRunning)),
				statecheck.ExpectKnownValue("kvm_vm.vm2", tfjsonpath.New("state"), knownvalue.StringExact(api.StateRunning)),
				statecheck.ExpectKnownValue("kvm_vm.vm1", tfjsonpath.New("ipv4_address"), knownvalue.StringExact(vm1.ip)),
				statecheck.ExpectKnownValue("kvm_vm.vm2", tfjsonpath.New("ipv4_address"), knownvalue.StringExact(vm2.ip)),
			},
			ConfigPlanChecks: resource.ConfigPlanChecks{PostApplyPostRefresh: []plancheck.PlanCheck{
				plancheck.ExpectEmptyPlan(),
			}},
			Check: checkBoot,
		},
		{
			PreConfig: cutTunnel,
			Config:    hcl(nil),
			ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
				plancheck.ExpectResourceAction("kvm_network.lan", plancheck.ResourceActionUpdate),
			}},
			Check: checkRepaired,
		},
	}
	// Five moves by default; KVM_GUEST_MOVES=N (odd, more than 5) runs N,
	// to hunt for rare migration faults.
	moves := []string{"host-b", "host-a", "host-b", "host-a", "host-b"}
	if n, _ := strconv.Atoi(os.Getenv("KVM_GUEST_MOVES")); n > 5 && n%2 == 1 {
		moves = nil
		for i := 0; i < n; i++ {
			moves = append(moves, []string{"host-b", "host-a"}[i%2])
		}
	}
	totalMoves = len(moves)
	for _, to := range moves {
		steps = append(steps, moveStep(to))
	}
	steps = append(steps,
		resource.TestStep{
			PreConfig: readUptime,
			Config:    hcl(func(c *guestConfig) { c.vm1Host = lastHost; c.vm1RootMiB = guestGrownMiB }),
			ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
				plancheck.ExpectResourceAction("kvm_disk.vm1_root", plancheck.ResourceActionUpdate),
				plancheck.ExpectResourceAction("kvm_vm.vm1", plancheck.ResourceActionNoop),
			}},
			Check: checkGrown,
		},
		resource.TestStep{
			PreConfig: measureFree,
			Config: hcl(func(c *guestConfig) {
				c.vm1Host, c.vm1RootMiB, c.writeBps = lastHost, guestGrownMiB, guestWriteBps
			}),
			Check: checkThrottled,
		},
		resource.TestStep{
			PreConfig: touch(fileA),
			Config: hcl(func(c *guestConfig) {
				c.vm1Host, c.vm1RootMiB, c.writeBps, c.snapshot = lastHost, guestGrownMiB, guestWriteBps, true
			}),
			Check: func(*terraform.State) error {
				touch(fileB)()
				return nil
			},
		},
		resource.TestStep{
			PreConfig: func() { revertAt = time.Now() },
			Config: hcl(func(c *guestConfig) {
				c.vm1Host, c.vm1RootMiB, c.writeBps, c.snapshot, c.revert = lastHost, guestGrownMiB, guestWriteBps, true, "1"
			}),
			Check: checkReverted,
		},
	)
	// The guest image shuts down cleanly on kvm-hostd's ACPI shutdown
	// (the kernel's last console line is "reboot: Power down"), well
	// within shutdown_timeout.
	var stopAt time.Time
	checkStopped := func(*terraform.State) error {
		took := time.Since(stopAt)
		log, err := os.ReadFile(filepath.Join(hs.Host("b").StateDir, "log", "qemu", vm2.name+"-serial.log"))
		if err != nil {
			return err
		}
		if !strings.Contains(string(log), "reboot: Power down") {
			return fmt.Errorf("vm2 stopped in %s without shutting down itself (no \"reboot: Power down\" on its console): it ignored the ACPI power button\n%s",
				took.Round(100*time.Millisecond), guestConsole(hs.Host("b"), vm2.name))
		}
		if took > time.Minute {
			return fmt.Errorf("the graceful stop of vm2 took %s", took.Round(100*time.Millisecond))
		}
		t.Logf("vm2: ACPI shutdown to powered off in %s (apply)", took.Round(100*time.Millisecond))
		return nil
	}
	steps = append(steps, resource.TestStep{
		PreConfig: func() { stopAt = time.Now() },
		Config: hcl(func(c *guestConfig) {
			c.vm1Host, c.vm1RootMiB, c.writeBps, c.snapshot, c.revert, c.vm2Stopped = lastHost, guestGrownMiB, guestWriteBps, true, "1", true
		}),
		ConfigStateChecks: []statecheck.StateCheck{
			statecheck.ExpectKnownValue("kvm_vm.vm2", tfjsonpath.New("state"), knownvalue.StringExact(api.StateShutoff)),
		},
		Check: checkStopped,
	})
	// While developing: KVM_GUEST_TEST_STEPS=n runs only the first n steps
	// (ignored on CI, where every step runs).
	if n, err := strconv.Atoi(os.Getenv("KVM_GUEST_TEST_STEPS")); err == nil && n > 0 && n < len(steps) && !realstack.CI() {
		t.Logf("KVM_GUEST_TEST_STEPS=%d: running %d of %d steps", n, n, len(steps))
		steps = steps[:n]
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps:                    steps,
	})
	if len(downtimes) > 0 {
		worst := downtimes[0]
		for _, d := range downtimes {
			worst = max(worst, d)
		}
		t.Logf("migration downtime over %d moves (lost 100 ms pings): %v; median %s, worst %s",
			len(downtimes), downtimes, medianDuration(downtimes), worst)
	}
	t.Logf("total %s", time.Since(start).Round(time.Second))
}

// waitGuest waits for a guest to answer a ping from the probe port (its
// static address is up), then for an SSH login with the key and
// cloud-init's boot-finished marker, and logs each time from QEMU's start.
func waitGuest(ctx context.Context, t *testing.T, host, probe *realstack.NSHost, g *guestVM, run func(*guestVM, string) (string, error)) error {
	qemuStart, err := guestQEMUStart(host, g.name)
	if err != nil {
		return err
	}
	if !harness.Wait(ctx, 8*time.Minute, func() bool {
		_, err := realNetPingN(probe, guestProbeIP, g.ip, 1, time.Second)
		return err == nil
	}) {
		return fmt.Errorf("%s: %s never answered a ping", g.name, g.ip)
	}
	t.Logf("%s: boot to IP (answers ping on %s) %s after QEMU started", g.name, g.ip, time.Since(qemuStart).Round(100*time.Millisecond))
	var last error
	if !harness.Wait(ctx, 6*time.Minute, func() bool {
		_, last = run(g, "test -f /var/lib/cloud/instance/boot-finished")
		return last == nil
	}) {
		return fmt.Errorf("%s: no SSH login with cloud-init finished: %v", g.name, last)
	}
	t.Logf("%s: boot to SSH (key login, cloud-init finished) %s after QEMU started", g.name, time.Since(qemuStart).Round(100*time.Millisecond))
	return nil
}

// guestAddressesInState checks that the guest's static address is among
// network_interfaces[0].addresses in state.
func guestAddressesInState(st *terraform.State, g *guestVM) error {
	rs, ok := st.RootModule().Resources["kvm_vm."+g.name]
	if !ok {
		return fmt.Errorf("kvm_vm.%s not in state", g.name)
	}
	a := rs.Primary.Attributes
	n, _ := strconv.Atoi(a["network_interfaces.0.addresses.#"])
	var got []string
	for i := 0; i < n; i++ {
		got = append(got, a[fmt.Sprintf("network_interfaces.0.addresses.%d", i)])
	}
	for _, addr := range got {
		if addr == g.ip {
			return nil
		}
	}
	return fmt.Errorf("kvm_vm.%s: network_interfaces[0].addresses = %v, want %s among them", g.name, got, g.ip)
}
