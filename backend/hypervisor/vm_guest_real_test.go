package hypervisor

import (
	"context"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"libvirt.org/go/libvirt"

	"github.com/kvmfleet/terraform-provider-kvm/backend/service"
	"github.com/kvmfleet/terraform-provider-kvm/backend/vswitch"
	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/guestimage"
	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

// TestRealGuestStaticIPv4 boots the guest image once with a static
// ipv4_address on an OVS network: the generated network-config must give
// the guest's NIC that address (its qemu-guest-agent reports it, read as
// GET /v1/vms/{name} does), the domain carries the agent channel, and the
// serial log holds the guest's boot output.
func TestRealGuestStaticIPv4(t *testing.T) {
	l, pool := openReal(t)
	ovsdb := realstack.RequireOVSDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	image, err := guestimage.Path(ctx)
	if err != nil {
		t.Fatal(err)
	}

	sw, err := vswitch.Open(ctx, ovsdb, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sw.Close() })
	network := uniq("gnet")
	net, err := sw.EnsureNetwork(ctx, network, api.NetworkSpec{}, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sw.DeleteNetwork(context.Background(), network) })

	root := uniq("groot")
	if _, err := l.CreateVolume(ctx, pool, root, api.VolumeSpec{SizeMiB: 3072, Format: api.FormatQCOW2}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(image)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := f.Stat()
	err = l.WriteVolume(ctx, pool, root, f, fi.Size())
	_ = f.Close()
	if err != nil {
		t.Fatal(err)
	}

	const mac, ip = "52:54:00:5e:a1:10", "10.77.99.10"
	zero := int64(0)
	name := uniq("guest")
	spec := api.VMSpec{VCPU: 1, MemoryMiB: 512, Running: true, ShutdownTimeoutSec: &zero,
		Disks: []api.VMDisk{{Pool: pool, Volume: root}},
		Interfaces: []api.VMInterface{{Network: network, Bridge: net.Bridge, MAC: mac, IPv4Address: ip,
			Subnet: &api.Subnet{CIDR: "10.77.99.0/24", Gateway: "10.77.99.1", DNSServers: []string{"10.77.99.1"}}}},
		CloudInit: &api.CloudInit{UserData: "#cloud-config\n"},
	}
	start := time.Now()
	vm, err := l.CreateVM(ctx, name, spec, service.VMMeta{})
	if err != nil {
		t.Fatal(err)
	}
	logPath := serialLogPath(name)
	t.Cleanup(func() {
		if err := l.DeleteVM(context.Background(), name, 0); err != nil {
			t.Errorf("delete: %v", err)
		}
		if _, err := os.Stat(logPath); !os.IsNotExist(err) {
			t.Errorf("serial log %s left behind: %v", logPath, err)
		}
	})
	if !*vm.GuestAgent || vm.Interfaces[0].IPv4Address != ip {
		t.Fatalf("read back: agent %v, NICs %+v", *vm.GuestAgent, vm.Interfaces)
	}
	if c := agentChannelOf(domainOf(t, l, name)); c == nil || c.Source.UNIX == nil {
		t.Fatal("no agent channel in the domain")
	}

	// Before the guest runs its agent: no addresses, at once.
	t0 := time.Now()
	qctx, qcancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	if m, err := l.GuestAddresses(qctx, name); len(m) != 0 || time.Since(t0) > 2*time.Second {
		t.Fatalf("early agent query: %v %v after %v", m, err, time.Since(t0))
	}
	qcancel()

	var got []string
	for {
		qctx, qcancel := context.WithTimeout(ctx, 1500*time.Millisecond)
		m, err := l.GuestAddresses(qctx, name)
		qcancel()
		if err != nil {
			t.Logf("agent: %v", err)
		}
		if got = m[mac]; slices.Contains(got, ip) {
			break
		}
		if ctx.Err() != nil || time.Since(start) > 10*time.Minute {
			b, _, _ := l.ConsoleLog(context.Background(), name, 4096)
			t.Fatalf("the guest reported %v, never %s; serial console:\n%s", m, ip, api.QuoteLines(string(b), "console| "))
		}
		time.Sleep(3 * time.Second)
	}
	t.Logf("boot to static IPv4 %s (agent): %s; all addresses %v", ip, time.Since(start).Round(time.Second), got)

	// The NIC carries the name the network-config gave it.
	err = l.withDomain(ctx, name, func(_ *libvirt.Connect, d *libvirt.Domain) error {
		ifs, err := d.ListAllInterfaceAddresses(libvirt.DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT)
		for _, i := range ifs {
			if strings.EqualFold(i.Hwaddr, mac) && i.Name != "eth0" {
				t.Errorf("NIC %s is named %s, want eth0", mac, i.Name)
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}

	// The serial log has the guest's boot output; a tail is a tail.
	b, truncated, err := l.ConsoleLog(ctx, name, 64<<10)
	if err != nil || !strings.Contains(string(b), "cloud-init") {
		t.Fatalf("serial log (%d bytes, err %v) has no cloud-init output:\n%s", len(b), err, b)
	}
	t.Logf("serial log: %d bytes (truncated %v)", len(b), truncated)
	if small, trunc, err := l.ConsoleLog(ctx, name, 100); err != nil || len(small) != 100 || !trunc {
		t.Fatalf("tail of 100: %d bytes, truncated %v, %v", len(small), trunc, err)
	}
}
