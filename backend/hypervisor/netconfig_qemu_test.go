package hypervisor

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/guestimage"
	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

// TestQEMUGuestNetworkConfig boots the guest image under plain QEMU (TCG,
// no libvirt or Open vSwitch) from the seed kvm-hostd writes for a VM with
// one static and one DHCP NIC, and asks the guest's qemu-guest-agent what
// its NICs carry: Debian's cloud-init (ENI renderer) must have named them
// eth0/eth1 by MAC, given eth0 the static address and run DHCP on eth1.
func TestQEMUGuestNetworkConfig(t *testing.T) {
	realstack.Require(t, "qemu-system-x86_64", "qemu-img")
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	image, err := guestimage.Path(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.qcow2")
	if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-b", image, "-F", "qcow2", disk).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	const staticMAC, dhcpMAC, ip = "52:54:00:5e:a1:10", "52:54:00:5e:a1:11", "10.77.99.10"
	ifs := []api.VMInterface{
		{MAC: staticMAC, IPv4Address: ip, Subnet: &api.Subnet{CIDR: "10.77.99.0/24", Gateway: "10.77.99.1", DNSServers: []string{"10.77.99.1"}}},
		{MAC: dhcpMAC},
	}
	seed, err := writeSeedISO(dir, "netcfg", seedCloudInit("netcfg", &api.CloudInit{UserData: "#cloud-config\n"}, ifs))
	if err != nil {
		t.Fatal(err)
	}
	qga := filepath.Join(dir, "qga.sock")
	console := filepath.Join(dir, "console.log")
	qemu := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-accel", "tcg", "-m", "768", "-smp", "1", "-nodefaults", "-display", "none", "-no-reboot",
		"-serial", "file:"+console,
		"-drive", "file="+disk+",if=virtio,format=qcow2",
		"-drive", "file="+seed+",if=virtio,format=raw,readonly=on",
		"-nic", "user,model=virtio-net-pci,mac="+staticMAC,
		"-nic", "user,model=virtio-net-pci,mac="+dhcpMAC,
		"-device", "virtio-serial",
		"-chardev", "socket,id=qga0,server=on,wait=off,path="+qga,
		"-device", "virtserialport,chardev=qga0,name="+guestAgentChannel)
	start := time.Now()
	if err := qemu.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = qemu.Process.Kill(); _ = qemu.Wait() }()

	for {
		ifaces, err := agentInterfaces(qga)
		if err == nil {
			got := map[string][]string{}
			names := map[string]string{}
			for _, i := range ifaces {
				names[i.MAC] = i.Name
				for _, a := range i.Addrs {
					if a.Type == "ipv4" {
						got[i.MAC] = append(got[i.MAC], a.Addr+"/"+strconv.Itoa(a.Prefix))
					}
				}
			}
			if slices.Contains(got[staticMAC], ip+"/24") && len(got[dhcpMAC]) > 0 {
				t.Logf("boot to both IPv4 addresses (agent, TCG): %s; %v, names %v", time.Since(start).Round(time.Second), got, names)
				if names[staticMAC] != "eth0" || names[dhcpMAC] != "eth1" {
					t.Errorf("NIC names %v, want eth0 and eth1 by MAC", names)
				}
				return
			}
		}
		if ctx.Err() != nil {
			b, _ := os.ReadFile(console)
			t.Fatalf("the guest never reported %s on %s and a DHCP address on %s (last: %v %v); console:\n%s",
				ip, staticMAC, dhcpMAC, ifaces, err, lastN(string(b), 60))
		}
		time.Sleep(3 * time.Second)
	}
}

type agentIface struct {
	Name  string `json:"name"`
	MAC   string `json:"hardware-address"`
	Addrs []struct {
		Type   string `json:"ip-address-type"`
		Addr   string `json:"ip-address"`
		Prefix int    `json:"prefix"`
	} `json:"ip-addresses"`
}

// agentInterfaces asks the agent on sock for guest-network-get-interfaces.
func agentInterfaces(sock string) ([]agentIface, error) {
	c, err := net.DialTimeout("unix", sock, 3*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	// guest-sync flushes whatever an earlier, timed-out request left.
	if _, err := c.Write([]byte(`{"execute":"guest-sync","arguments":{"id":7}}` + "\n")); err != nil {
		return nil, err
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return nil, err
		}
		if strings.Contains(line, `"return": 7`) || strings.Contains(line, `"return":7`) {
			break
		}
	}
	if _, err := c.Write([]byte(`{"execute":"guest-network-get-interfaces"}` + "\n")); err != nil {
		return nil, err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	var reply struct {
		Return []agentIface `json:"return"`
	}
	if err := json.Unmarshal([]byte(line), &reply); err != nil {
		return nil, err
	}
	return reply.Return, nil
}

func lastN(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
