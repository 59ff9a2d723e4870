package kvm

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/terraform"

	"github.com/kvmfleet/terraform-provider-kvm/internal/guestimage"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

const (
	devicesNetwork  = "ddhcp"
	devicesSubnet   = "10.32.0.0/24"
	devicesPoolDir  = "/var/lib/libvirt/images/kvm-devices-test"
	devicesPassword = "s3cret"
	devicesDataMiB  = 1024
	devicesWriteMiB = 320
)

func devicesHCL(providerHCL, imageURL string, passwordVersion int) string {
	return providerHCL + fmt.Sprintf(`
resource "kvm_network" "dhcp" {
  name   = %q
  subnet = { cidr = %q }
  dhcp   = true
}

resource "kvm_disk" "base" {
  name       = "devices-base"
  host       = "host-a"
  format     = "qcow2"
  source_url = %q
}

resource "kvm_disk" "root" {
  name         = "devices-root"
  host         = "host-a"
  base_disk_id = kvm_disk.base.id
}

resource "kvm_disk" "data" {
  name     = "devices-data"
  host     = "host-a"
  format   = "qcow2"
  size_mib = %d
}

resource "kvm_vm" "dev" {
  name             = "devices"
  host             = "host-a"
  vcpu             = 2
  memory_mib       = 512
  shutdown_timeout = 0
  graphics = {
    type                = "vnc"
    password_wo         = %q
    password_wo_version = %d
  }
  disks = [
    { disk_id = kvm_disk.root.id, cache = "writeback", io = "io_uring" },
    { disk_id = kvm_disk.data.id, bus = "scsi", cache = "none", io = "native", discard = "unmap" },
  ]
  network_interfaces = [{
    network = kvm_network.dhcp.name
    queues  = 2
  }]
  cloud_init = {
    user_data = "#cloud-config\n"
    meta_data = "instance-id: devices\nlocal-hostname: devices\n"
  }
  wait_for_ip = { timeout = "12m" }
}
`, devicesNetwork, devicesSubnet, imageURL, devicesDataMiB, devicesPassword, passwordVersion)
}

// TestAccVMDevicesReal boots ONE guest of the project's image with every
// device attribute and checks each from where it matters: the VNC console
// answers on its address asking for a password (which is nowhere in the
// API or the plain domain XML), the guest has /dev/hwrng from virtio-rng
// and two queues on its NIC, a discard in the guest shrinks the qcow2 on
// the host, and the live domain runs the cache/io modes asked for. A new
// console password is then applied without a restart.
func TestAccVMDevicesReal(t *testing.T) {
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
	hs := realstack.StartHostNamespaces(ctx, t, realstack.HostsOptions{Names: []string{"d"}, OVS: true})
	h := hs.Host("d")
	imageURL := serveGuestImage(t, image)
	c := startNSHostd(t, h, devicesPoolDir)
	hostd := c.Host("host-a")
	agent := guestAgent{h: h, domain: "devices", logf: t.Logf}
	virsh := func(args ...string) (string, error) {
		out, err := h.Command("virsh", append([]string{"-c", "qemu:///system"}, args...)...).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("virsh %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return string(out), nil
	}
	var qemuStart time.Time
	modern := os.Getenv(modernTerraformEnv)
	if modern == "" && realstack.CI() {
		t.Fatalf("%s is not set: the kvm_vm_power reboot step needs Terraform >= 1.14", modernTerraformEnv)
	}

	checkAll := func(st *terraform.State) error {
		t.Logf("guest up after %s", time.Since(start).Round(time.Second))
		attrs := st.RootModule().Resources["kvm_vm.dev"].Primary.Attributes
		if err := agent.waitReady(ctx, 5*time.Minute); err != nil {
			return fmt.Errorf("%w\n%s", err, guestConsole(h, "devices"))
		}
		if qemuStart, err = guestQEMUStart(h, "devices"); err != nil {
			return err
		}

		// The console: its address in state, an RFB server there that
		// offers VNC authentication only (the password is set).
		port, _ := strconv.Atoi(attrs["graphics.port"])
		if port < 5900 || attrs["graphics.address"] != "127.0.0.1:"+attrs["graphics.port"] || attrs["graphics.listen"] != "127.0.0.1" {
			return fmt.Errorf("console in state: port %q address %q listen %q", attrs["graphics.port"], attrs["graphics.address"], attrs["graphics.listen"])
		}
		if _, ok := attrs["graphics.password_wo"]; ok && attrs["graphics.password_wo"] != "" {
			return fmt.Errorf("the write-only password is in state")
		}
		banner, types, err := rfbHandshake(h, attrs["graphics.address"])
		if err != nil {
			return err
		}
		if !strings.HasPrefix(banner, "RFB 003.") || !slices.Contains(types, 2) || slices.Contains(types, 1) {
			return fmt.Errorf("console at %s: banner %q, security types %v; want RFB offering VNC authentication (2) and not None (1)",
				attrs["graphics.address"], banner, types)
		}
		t.Logf("console %s: %q, security types %v", attrs["graphics.address"], strings.TrimSpace(banner), types)

		// The password is in no read-back: API JSON, plain XML, host log.
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, hostd.URL+"/v1/vms/devices", nil)
		req.Header.Set("Authorization", "Bearer "+c.Token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || strings.Contains(string(body), devicesPassword) || strings.Contains(string(body), "password") {
			return fmt.Errorf("GET /v1/vms/devices (%s) shows the console password: %s", resp.Status, body)
		}
		for _, args := range [][]string{{"dumpxml", "devices"}, {"dumpxml", "--inactive", "devices"}} {
			x, err := virsh(args...)
			if err != nil {
				return err
			}
			if strings.Contains(x, devicesPassword) || strings.Contains(x, "passwd") {
				return fmt.Errorf("virsh %s shows the console password", strings.Join(args, " "))
			}
		}
		if strings.Contains(hostd.Log(), devicesPassword) {
			return fmt.Errorf("the kvm-hostd log shows the console password")
		}

		// The live domain runs what was asked.
		live, err := virsh("dumpxml", "devices")
		if err != nil {
			return err
		}
		flat := regexp.MustCompile(`>\s+<`).ReplaceAllString(live, "><")
		for _, want := range []*regexp.Regexp{
			regexp.MustCompile(`<driver name='qemu' type='qcow2' cache='writeback' io='io_uring' discard='unmap'/><source file='[^']*devices-root'`),
			regexp.MustCompile(`<driver name='qemu' type='qcow2' cache='none' io='native' discard='unmap'/><source file='[^']*devices-data'`),
			regexp.MustCompile(`<iothreads>1</iothreads>`),
			regexp.MustCompile(`<controller type='scsi' index='0' model='virtio-scsi'><driver iothread='1'/>`),
			regexp.MustCompile(`<model type='virtio'/><driver queues='2'[/>]`),
			regexp.MustCompile(`<rng model='virtio'><backend model='random'>/dev/urandom</backend>`),
		} {
			if !want.MatchString(flat) {
				return fmt.Errorf("live domain XML lacks %s:\n%s", want, live)
			}
		}

		// virtio-rng is the guest's hardware RNG.
		out, err := agent.run(ctx, "/bin/sh", "-c", "test -c /dev/hwrng && cat /sys/class/misc/hw_random/rng_current")
		if err != nil {
			return err
		}
		if !strings.Contains(out, "virtio") {
			return fmt.Errorf("rng_current is %q, want virtio_rng", out)
		}
		t.Logf("guest hwrng: %s", strings.TrimSpace(out))

		// Two combined queues on the guest's NIC.
		out, err = agent.run(ctx, "/bin/sh", "-c",
			`for n in /sys/class/net/*; do [ -e "$n/device" ] || continue; echo "$(basename $n) $(ls -d $n/queues/rx-* | wc -l) $(ls -d $n/queues/tx-* | wc -l)"; done`)
		if err != nil {
			return err
		}
		if f := strings.Fields(out); len(f) != 3 || f[1] != "2" || f[2] != "2" {
			return fmt.Errorf("guest NIC queues (name rx tx): %q, want 2 and 2", out)
		}
		t.Logf("guest NIC queues (name rx tx): %s", strings.TrimSpace(out))

		// discard = unmap: blocks the guest frees leave the qcow2.
		dataFile := filepath.Join(devicesPoolDir, "devices-data")
		before, err := allocatedMiB(h, dataFile)
		if err != nil {
			return err
		}
		out, err = agent.run(ctx, "/bin/sh", "-c", fmt.Sprintf(`set -e
dev=$(lsblk -dnbpo NAME,SIZE | awk '$2 == %d {print $1}' | head -1)
[ -n "$dev" ]
echo "disk $dev discard $(cat /sys/block/$(basename $dev)/queue/discard_max_bytes)"
mkfs.ext4 -q -F -E nodiscard "$dev"
mkdir -p /mnt/data && mount "$dev" /mnt/data
dd if=/dev/zero of=/mnt/data/fill bs=1M count=%d conv=fsync status=none
sync`, devicesDataMiB<<20, devicesWriteMiB))
		if err != nil {
			return err
		}
		t.Logf("guest: %s", strings.TrimSpace(out))
		written, err := allocatedMiB(h, dataFile)
		if err != nil {
			return err
		}
		out, err = agent.run(ctx, "/bin/sh", "-c", "rm /mnt/data/fill && sync && fstrim -v /mnt/data && umount /mnt/data")
		if err != nil {
			return err
		}
		trimmed, err := allocatedMiB(h, dataFile)
		if err != nil {
			return err
		}
		t.Logf("data qcow2 allocated: %d MiB empty, %d MiB after writing %d MiB, %d MiB after rm + fstrim (%s)",
			before, written, devicesWriteMiB, trimmed, strings.TrimSpace(out))
		if written-before < devicesWriteMiB*3/4 || written-trimmed < devicesWriteMiB*3/4 {
			return fmt.Errorf("discard did not reach the volume: %d MiB allocated after writing, %d MiB after fstrim", written, trimmed)
		}
		return nil
	}

	// A new password: applied live (QEMU keeps running), still asked for.
	checkRotated := func(st *terraform.State) error {
		again, err := guestQEMUStart(h, "devices")
		if err != nil {
			return err
		}
		if !again.Equal(qemuStart) {
			return fmt.Errorf("QEMU restarted (started %s, was %s) for a password change", again, qemuStart)
		}
		attrs := st.RootModule().Resources["kvm_vm.dev"].Primary.Attributes
		_, types, err := rfbHandshake(h, attrs["graphics.address"])
		if err != nil {
			return err
		}
		if !slices.Contains(types, 2) {
			return fmt.Errorf("after the password change the console offers %v", types)
		}
		t.Logf("total %s", time.Since(start).Round(time.Second))
		return nil
	}

	// `terraform apply -invoke` of kvm_vm_power (Terraform >= 1.14, from a
	// working directory holding only the action, as an operator would)
	// reboots the guest: a new boot ID and an uptime shorter than the
	// invoke. The rest of the test runs on the oldest supported Terraform.
	checkInvokedReboot := func(*terraform.State) error {
		if modern == "" {
			t.Logf("kvm_vm_power reboot not checked: set %s", modernTerraformEnv)
			return nil
		}
		bootID := func() (string, error) {
			out, err := agent.run(ctx, "/bin/cat", "/proc/sys/kernel/random/boot_id")
			return strings.TrimSpace(out), err
		}
		before, err := bootID()
		if err != nil {
			return err
		}
		w, err := harness.NewWorkdir(t.TempDir(), "power", modern, "KVM_HOSTS="+c.KVMHosts(), "KVM_TOKEN="+c.Token)
		if err != nil {
			return err
		}
		if err := w.WriteConfig(actionsHCLHeader + `
action "kvm_vm_power" "reboot" {
  config {
    vm_id = "host-a/devices"
    state = "rebooted"
  }
}
`); err != nil {
			return err
		}
		invoked := time.Now()
		if out, err := w.Run(ctx, "apply", "-auto-approve", "-input=false", "-no-color", "-invoke=action.kvm_vm_power.reboot"); err != nil {
			return fmt.Errorf("%w\n%s", err, out)
		}
		took := time.Since(invoked)
		if err := agent.waitReady(ctx, 5*time.Minute); err != nil {
			return fmt.Errorf("after the reboot action: %w\n%s", err, guestConsole(h, "devices"))
		}
		after, err := bootID()
		if err != nil {
			return err
		}
		out, err := agent.run(ctx, "/bin/cat", "/proc/uptime")
		if err != nil {
			return err
		}
		var uptime float64
		if _, err := fmt.Sscan(out, &uptime); err != nil {
			return fmt.Errorf("guest /proc/uptime %q: %w", out, err)
		}
		if after == before || time.Duration(uptime*float64(time.Second)) > time.Since(invoked) {
			return fmt.Errorf("kvm_vm_power rebooted nothing: boot ID %s -> %s, uptime %.0fs, invoked %s ago", before, after, uptime, time.Since(invoked).Round(time.Second))
		}
		t.Logf("kvm_vm_power reboot: invoke took %s, guest up %.0fs later (boot ID %s -> %s)", took.Round(time.Second), uptime, before, after)
		return nil
	}

	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{Config: devicesHCL(c.ProviderHCL(), imageURL, 1), Check: checkAll},
			{Config: devicesHCL(c.ProviderHCL(), imageURL, 2), Check: checkRotated},
			{Config: devicesHCL(c.ProviderHCL(), imageURL, 2), Check: checkInvokedReboot},
		},
	})
}

// rfbHandshake connects to a VNC server, reads its banner, answers with
// the same version and returns the security types it offers. It dials
// from the test's own namespace (where libvirtd's QEMU listens) and, if
// that fails, from the host's.
func rfbHandshake(h *realstack.NSHost, addr string) (string, []int, error) {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		var nerr error
		if conn, nerr = guestDial(h, addr, 10*time.Second); nerr != nil {
			return "", nil, fmt.Errorf("console %s: %v (from the host's namespace: %v)", addr, err, nerr)
		}
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	banner := make([]byte, 12)
	if _, err := io.ReadFull(conn, banner); err != nil {
		return "", nil, fmt.Errorf("console %s: reading the RFB banner: %w", addr, err)
	}
	if _, err := conn.Write(banner); err != nil {
		return "", nil, err
	}
	var n [1]byte
	if _, err := io.ReadFull(conn, n[:]); err != nil {
		return string(banner), nil, err
	}
	list := make([]byte, n[0])
	if _, err := io.ReadFull(conn, list); err != nil {
		return string(banner), nil, err
	}
	var types []int
	for _, b := range list {
		types = append(types, int(b))
	}
	return string(banner), types, nil
}

// allocatedMiB is the space a file takes on disk (not its apparent size),
// as the namespace host h sees it (its /var/lib/libvirt is its own).
func allocatedMiB(h *realstack.NSHost, path string) (int64, error) {
	out, err := h.Command("stat", "-c", "%b %B", path).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("stat %s on %s: %v: %s", path, h.Name, err, out)
	}
	var blocks, size int64
	if _, err := fmt.Sscan(string(out), &blocks, &size); err != nil {
		return 0, fmt.Errorf("stat %s: %q: %w", path, out, err)
	}
	return blocks * size >> 20, nil
}
