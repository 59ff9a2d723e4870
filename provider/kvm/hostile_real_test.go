package kvm

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/terraform"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/guestimage"
	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

// The hostile guest's network: kvm-hostd serves DHCP on it; the attacker
// takes a lease, the victim has a reservation it never takes (it has no
// operating system), so any address the victim is ever reported to hold
// was put there by the attacker.
const (
	hostileNetwork   = "hdhcp"
	hostileSubnet    = "10.31.0.0/24"
	hostileAttacker  = "52:54:00:31:00:11"
	hostileVictimMAC = "52:54:00:31:00:50"
	hostileVictimIP  = "10.31.0.50"
	hostileToolPath  = "/usr/local/sbin/kvm-hostile-guest" // /run is noexec
)

func hostileHCL(providerHCL, imageURL, description, waitFor string) string {
	return providerHCL + fmt.Sprintf(`
resource "kvm_network" "dhcp" {
  name   = %q
  subnet = { cidr = %q }
  dhcp   = true
}

resource "kvm_disk" "base" {
  name       = "hostile-base"
  host       = "host-a"
  format     = "qcow2"
  source_url = %q
}

resource "kvm_disk" "attacker_root" {
  name         = "attacker-root"
  host         = "host-a"
  base_disk_id = kvm_disk.base.id
}

resource "kvm_vm" "attacker" {
  name             = "attacker"
  host             = "host-a"
  vcpu             = 1
  memory_mib       = 384
  shutdown_timeout = 0
  description      = %q
  disks            = [{ disk_id = kvm_disk.attacker_root.id }]
  network_interfaces = [{
    network = kvm_network.dhcp.name
    mac     = %q
  }]
  cloud_init = {
    user_data = "#cloud-config\n"
    meta_data = "instance-id: attacker\nlocal-hostname: attacker\n"
  }
  wait_for_ip = { timeout = %q }
}

# The victim boots a sector that halts: no DHCP client ever runs in it
# (without a disk, the NIC's PXE ROM would take its lease).
resource "kvm_disk" "victim_root" {
  name       = "victim-root"
  host       = "host-a"
  format     = "raw"
  source_url = "${replace(%q, "debian-bookworm.qcow2", "halt.img")}"
}

resource "kvm_vm" "victim" {
  name             = "victim"
  host             = "host-a"
  vcpu             = 1
  memory_mib       = 64
  shutdown_timeout = 0
  guest_agent      = false
  disks            = [{ disk_id = kvm_disk.victim_root.id }]
  network_interfaces = [{
    network      = kvm_network.dhcp.name
    mac          = %q
    ipv4_address = %q
  }]
}
`, hostileNetwork, hostileSubnet, imageURL, description, hostileAttacker, waitFor, imageURL, hostileVictimMAC, hostileVictimIP)
}

// controlChars matches what a terminal would act on: C0 but newline and
// tab, DEL, and C1.
var controlChars = regexp.MustCompile(`[\x00-\x08\x0b-\x1f\x7f\x{80}-\x{9f}]`)

// TestAccHostileGuestReal is the guest as attacker, on the real stack: the
// project's guest image on a DHCP network beside a VM with a reservation.
// From inside the guest (root, through its agent) it forges DHCP frames at
// kvm-hostd, replaces its agent with one that answers poisoned data, and
// writes escape sequences to its console. kvm-hostd must keep running, the
// victim must never show an address it did not take, state must hold only
// valid bounded addresses, and a wait_for_ip error must quote no raw
// control character.
func TestAccHostileGuestReal(t *testing.T) {
	realstack.Require(t, "libvirtd", "virtlogd", "virsh", "nsenter", "ip", "qemu-system-x86_64",
		"ovs-vsctl", "ovs-ofctl", "ovsdb-server", "ovs-vswitchd")
	testAccPreCheck(t)
	parallelNSHostTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	start := time.Now()

	image, err := guestimage.Path(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tool := buildGuestTool(t, "./internal/hostileguest")
	hs := realstack.StartHostNamespaces(ctx, t, realstack.HostsOptions{Names: []string{"x"}, OVS: true})
	h := hs.Host("x")
	halt := haltImage()
	imageURL := serveToHosts(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/halt.img") {
			http.ServeContent(w, r, "halt.img", time.Time{}, bytes.NewReader(halt))
			return
		}
		http.ServeFile(w, r, image)
	})) + "/debian-bookworm.qcow2"
	c := startNSHostd(t, h, "/var/lib/libvirt/images/kvm-hostile-test")
	hostd := c.Host("host-a")
	cl := testAccVMClient(t, c, "host-a")
	pid := hostd.PID()
	agent := guestAgent{h: h, domain: "attacker", logf: t.Logf}

	// alive: the same kvm-hostd process still runs and answers.
	alive := func(after string) error {
		if !hostd.Running() || hostd.PID() != pid {
			return fmt.Errorf("kvm-hostd (pid %d) died after %s:\n%s", pid, after, hostd.Log())
		}
		resp, err := http.Get(hostd.URL + "/healthz")
		if err != nil {
			return fmt.Errorf("kvm-hostd /healthz after %s: %w", after, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("kvm-hostd /healthz after %s: %s", after, resp.Status)
		}
		return nil
	}
	// victimClean: the victim, which never ran a DHCP client, is reported
	// with no address.
	victimClean := func(after string) error {
		vm, err := cl.GetVM(ctx, "victim")
		if err != nil {
			return err
		}
		if vm.IPv4Address != "" || vm.AddressSource != "" || (len(vm.Interfaces) > 0 && len(vm.Interfaces[0].Addresses) > 0) {
			return fmt.Errorf("after %s the victim is reported with address %q (source %q, NIC %v): forged by the attacker",
				after, vm.IPv4Address, vm.AddressSource, vm.Interfaces)
		}
		return nil
	}
	var attackerIP string

	// Step 1: the attacker boots and takes its lease; then forges DHCP.
	attackDHCP := func(st *terraform.State) error {
		attackerIP = st.RootModule().Resources["kvm_vm.attacker"].Primary.Attributes["ipv4_address"]
		if attackerIP == "" {
			return fmt.Errorf("the attacker has no address in state")
		}
		t.Logf("attacker up with %s after %s", attackerIP, time.Since(start).Round(time.Second))
		if err := victimClean("create"); err != nil {
			return err
		}
		if err := agent.waitReady(ctx, 5*time.Minute); err != nil {
			return fmt.Errorf("%w\n%s", err, guestConsole(h, "attacker"))
		}
		if err := agent.writeFile(ctx, hostileToolPath, tool); err != nil {
			return err
		}
		attacks := []struct {
			name string
			args []string
		}{
			{"an INFORM with no ciaddr and no broadcast flag", []string{"-type", "inform"}},
			{"a REQUEST for the victim's address with the victim's chaddr", []string{"-type", "request", "-chaddr", hostileVictimMAC, "-requested", hostileVictimIP}},
			{"a REQUEST for the victim's address with the victim's chaddr, broadcast", []string{"-type", "request", "-chaddr", hostileVictimMAC, "-requested", hostileVictimIP, "-broadcast"}},
			{"a wrong REQUEST with the victim's chaddr", []string{"-type", "request", "-chaddr", hostileVictimMAC, "-requested", "10.31.0.99"}},
			{"a RELEASE with the victim's chaddr", []string{"-type", "release", "-chaddr", hostileVictimMAC, "-ciaddr", hostileVictimIP}},
			{"a DISCOVER from the victim's MAC", []string{"-type", "discover", "-chaddr", hostileVictimMAC, "-src", hostileVictimMAC}},
			{"a REQUEST from the victim's MAC", []string{"-type", "request", "-chaddr", hostileVictimMAC, "-src", hostileVictimMAC, "-requested", hostileVictimIP}},
			{"a RELEASE from the victim's MAC", []string{"-type", "release", "-chaddr", hostileVictimMAC, "-src", hostileVictimMAC, "-ciaddr", hostileVictimIP}},
			{"a DECLINE with the victim's chaddr", []string{"-type", "decline", "-chaddr", hostileVictimMAC, "-requested", hostileVictimIP}},
		}
		for _, a := range attacks {
			out, err := agent.run(ctx, hostileToolPath, append([]string{"dhcp", "-wait", "2s"}, a.args...)...)
			if err != nil {
				return fmt.Errorf("%s: %w\n%s", a.name, err, guestConsole(h, "attacker"))
			}
			if err := alive(a.name); err != nil {
				return err
			}
			if err := victimClean(a.name); err != nil {
				return err
			}
			if strings.Contains(out, "reply ack") && strings.Contains(strings.Join(a.args, " "), hostileVictimMAC) {
				return fmt.Errorf("%s was acknowledged: %s", a.name, out)
			}
			t.Logf("%s: %s", a.name, strings.TrimSpace(out))
		}
		// The attacker's own service still works: it renews its lease.
		out, err := agent.run(ctx, hostileToolPath, "renew")
		if err != nil {
			return fmt.Errorf("the attacker's own renewal: %w\n%s", err, guestConsole(h, "attacker"))
		}
		if strings.TrimSpace(out) != "ack "+attackerIP {
			return fmt.Errorf("the attacker's own renewal: %q, want ack %s", out, attackerIP)
		}
		return alive("the renewal")
	}

	// Step 2: the attacker replaces its agent with a poisoning one.
	replaceAgent := func() {
		// The hostile agent stops the real one, which may then no longer
		// be there to report how systemd-run exited: start it and look
		// for the hostile agent instead of waiting for that status.
		if _, err := agent.start(ctx, "/usr/bin/systemd-run", "--unit=kvm-hostile-agent", "--collect", hostileToolPath, "agent",
			"-victim-mac", hostileVictimMAC, "-victim-ip", hostileVictimIP); err != nil {
			t.Fatal(err)
		}
		// Only the hostile agent knows kvm-hostile-ping.
		deadline := time.Now().Add(2 * time.Minute)
		for {
			_, err := agent.call(ctx, "kvm-hostile-ping", nil)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the hostile agent never answered: %v", err)
			}
			time.Sleep(time.Second)
		}
	}
	checkSanitized := func(st *terraform.State) (err error) {
		if err := alive("the poisoned agent answered"); err != nil {
			return err
		}
		attrs := st.RootModule().Resources["kvm_vm.attacker"].Primary.Attributes
		var inState []string
		for k, v := range attrs {
			if strings.HasPrefix(k, "network_interfaces.0.addresses.") && k != "network_interfaces.0.addresses.#" {
				inState = append(inState, v)
			}
		}
		// The poisoned reply is large (a 1 MiB zone, 1,800 addresses): a
		// read may time out on the agent and fall back to the lease, so
		// read until the agent's answer made it through.
		var vm *api.VM
		for deadline := time.Now().Add(time.Minute); ; {
			if vm, err = cl.GetVM(ctx, "attacker"); err != nil {
				return err
			}
			if vm.AddressSource == "agent" {
				break
			}
			if time.Now().After(deadline) {
				began := time.Now()
				out, err := h.Command("virsh", "-c", "qemu:///system", "domifaddr", "attacker", "--source", "agent").CombinedOutput()
				raw, rawErr := h.Command("virsh", "-c", "qemu:///system", "qemu-agent-command", "attacker", `{"execute":"guest-network-get-interfaces"}`).CombinedOutput()
				return fmt.Errorf("attacker addresses came from %q, never from the (hostile) agent; libvirt in %s: %v: %.2000s; the raw answer (%d bytes, %v): %.300q",
					vm.AddressSource, time.Since(began).Round(time.Millisecond), err, out, len(raw), rawErr, raw)
			}
			time.Sleep(2 * time.Second)
		}
		if len(vm.Interfaces) != 1 {
			return fmt.Errorf("attacker reported with %d NICs, want its 1", len(vm.Interfaces))
		}
		for where, addrs := range map[string][]string{"state": inState, "API": vm.Interfaces[0].Addresses} {
			if len(addrs) > 64 {
				return fmt.Errorf("%s holds %d addresses for one NIC (the agent sent 1,500)", where, len(addrs))
			}
			for _, a := range addrs {
				if err := hostileAddrOK(a); err != nil {
					return fmt.Errorf("%s holds %w", where, err)
				}
			}
		}
		if vm.IPv4Address != attackerIP || attrs["ipv4_address"] != attackerIP {
			return fmt.Errorf("ipv4_address API %q, state %q: want %s, the NIC's address inside its subnet", vm.IPv4Address, attrs["ipv4_address"], attackerIP)
		}
		t.Logf("poisoned agent: state holds %d addresses, ipv4_address %s", len(inState), attackerIP)
		return victimClean("the poisoned agent answered")
	}

	// Step 3: the agent reports poison only, the lease is given up and the
	// console gets escape sequences: wait_for_ip times out and quotes it.
	poison := func() {
		if _, err := agent.call(ctx, "kvm-hostile-poison", nil); err != nil {
			t.Fatal(err)
		}
	}
	// The whole error must be free of control characters and still quote
	// the console (its first words, escaped).
	noRawControls := regexp.MustCompile(`(?s)\A[^\x00-\x08\x0b-\x1f\x7f\x{80}-\x{9f}]*hostile\s+console[^\x00-\x08\x0b-\x1f\x7f\x{80}-\x{9f}]*\z`)

	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config: hostileHCL(c.ProviderHCL(), imageURL, "attacker", "12m"),
				Check:  attackDHCP,
			},
			{
				PreConfig:    replaceAgent,
				RefreshState: true,
				Check:        checkSanitized,
			},
			{
				PreConfig:   poison,
				Config:      hostileHCL(c.ProviderHCL(), imageURL, "attacker, poisoned", "40s"),
				ExpectError: noRawControls,
			},
		},
	})
	if err := alive("the test"); err != nil {
		t.Error(err)
	}
	t.Logf("total %s", time.Since(start).Round(time.Second))
}

// haltImage is a 1 MiB raw disk whose boot sector halts the CPU for good
// (cli; hlt; jmp back to hlt): a guest that runs nothing and costs no CPU.
func haltImage() []byte {
	b := make([]byte, 1<<20)
	copy(b, []byte{0xfa, 0xf4, 0xeb, 0xfd})
	b[510], b[511] = 0x55, 0xaa
	return b
}

// hostileAddrOK says whether a reported address is one a host may pass on
// for the attacker: a valid IP without zone, not unspecified, broadcast,
// multicast, loopback or link-local, and not the victim's reservation.
func hostileAddrOK(a string) error {
	if controlChars.MatchString(a) || len(a) > 45 {
		return fmt.Errorf("address %q with control characters or too long", a)
	}
	ip, err := netip.ParseAddr(a)
	if err != nil || ip.Zone() != "" {
		return fmt.Errorf("address %q that is no plain IP", a)
	}
	if ip.IsUnspecified() || ip.IsMulticast() || ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return fmt.Errorf("address %s that no guest may hold", a)
	}
	if a == hostileVictimIP {
		return fmt.Errorf("the victim's reserved address %s", a)
	}
	return nil
}
