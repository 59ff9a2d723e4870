package hypervisor

import (
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/kvmfleet/terraform-provider-kvm/backend/service"
	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

func devicesSpec() *api.VMSpec {
	no := false
	return &api.VMSpec{
		VCPU: 2, MemoryMiB: 64,
		Disks: []api.VMDisk{
			{Pool: "default", Volume: "root", Bus: "virtio", Cache: "writeback", IO: "io_uring", Discard: "ignore"},
			{Pool: "default", Volume: "data", Bus: "scsi", Cache: "none", IO: "native", Discard: "unmap"},
		},
		Interfaces: []api.VMInterface{{Network: "lan", MAC: "52:54:00:00:00:01", Model: "virtio", Bridge: "br-lan", Queues: 2}},
		Graphics:   &api.Graphics{Type: "vnc", Listen: "127.0.0.1", Password: "s3cret"},
		GuestAgent: &no,
	}
}

func devicesDisks(spec *api.VMSpec) []resolvedDisk {
	var out []resolvedDisk
	for _, d := range spec.Disks {
		out = append(out, resolvedDisk{VMDisk: d, Path: "/pool/" + d.Volume, Format: "qcow2"})
	}
	return out
}

// The XML carries every device setting, and reads back exactly as asked
// (the password excepted: it is never read back).
func TestDevicesXMLRoundTrip(t *testing.T) {
	spec := devicesSpec()
	x, err := buildDomain(spec, domainParams{name: "dev", virtType: "qemu", disks: devicesDisks(spec), meta: &instanceMeta{}, probe: &HostProbe{}})
	if err != nil {
		t.Fatal(err)
	}
	doc, err := x.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	flat := regexp.MustCompile(`>\s+<`).ReplaceAllString(doc, "><")
	for _, want := range []string{
		`<iothreads>1</iothreads>`,
		`cache="writeback" io="io_uring" discard="ignore"`,
		`cache="none" io="native" discard="unmap"`,
		`<controller type="scsi" model="virtio-scsi"><driver iothread="1"></driver>`,
		`<driver queues="2">`,
		`<rng model="virtio"><backend model="random">/dev/urandom</backend></rng>`,
		`<graphics type="vnc" autoport="yes" passwd="s3cret" listen="127.0.0.1"><listen type="address" address="127.0.0.1"></listen></graphics>`,
	} {
		if !strings.Contains(flat, want) {
			t.Errorf("domain XML lacks %s:\n%s", want, doc)
		}
	}
	back := &libvirtxml.Domain{}
	if err := back.Unmarshal(doc); err != nil {
		t.Fatal(err)
	}
	got, _ := specOf(back, nil)
	for i, d := range got.Disks {
		w := spec.Disks[i]
		if d.Cache != w.Cache || d.IO != w.IO || d.Discard != w.Discard || d.Bus != w.Bus {
			t.Errorf("disks[%d] read back %+v, want %+v", i, d, w)
		}
	}
	if got.Interfaces[0].Queues != 2 {
		t.Errorf("queues read back %d", got.Interfaces[0].Queues)
	}
	if !got.RNGEnabled() || got.RNG == nil {
		t.Errorf("rng read back %v", got.RNG)
	}
	if g := got.Graphics; g == nil || *g != (api.Graphics{Type: "vnc", Listen: "127.0.0.1", Port: -1}) {
		t.Errorf("graphics read back %+v", got.Graphics)
	}
	if len(api.HardwareChanges(got, *spec)) != 0 {
		t.Errorf("read-back differs from the spec: %v", api.HardwareChanges(got, *spec))
	}

	// rng = false and no console: neither device, and both read back so.
	no := false
	spec.RNG, spec.Graphics = &no, nil
	x, err = buildDomain(spec, domainParams{name: "dev", virtType: "qemu", disks: devicesDisks(spec), meta: &instanceMeta{}, probe: &HostProbe{}})
	if err != nil {
		t.Fatal(err)
	}
	if len(x.Devices.RNGs) != 0 || len(x.Devices.Graphics) != 0 {
		t.Errorf("devices: rng %v graphics %v", x.Devices.RNGs, x.Devices.Graphics)
	}
	got, _ = specOf(x, nil)
	if got.RNGEnabled() || got.Graphics != nil {
		t.Errorf("read back rng %v graphics %v", got.RNGEnabled(), got.Graphics)
	}
}

// Domains defined before these attributes existed read back what they
// run: QEMU's default cache (writeback), no discard (ignore), no RNG. The
// first plan then shows the change to the defaults (one restart).
func TestDevicesReadBackOfOlderDomains(t *testing.T) {
	x := &libvirtxml.Domain{}
	if err := x.Unmarshal(`<domain type="qemu"><name>old</name><devices>
<disk type="file" device="disk"><driver name="qemu" type="qcow2"/><source file="/pool/a"/><target dev="vda" bus="virtio"/></disk>
<disk type="file" device="disk"><driver name="qemu" type="qcow2" discard="unmap" cache="default"/><source file="/pool/b"/><target dev="vdb" bus="virtio"/></disk>
<interface type="bridge"><mac address="52:54:00:00:00:02"/><source bridge="br"/><model type="virtio"/></interface>
</devices></domain>`); err != nil {
		t.Fatal(err)
	}
	s, _ := specOf(x, nil)
	if d := s.Disks[0]; d.Cache != "writeback" || d.IO != "" || d.Discard != "ignore" {
		t.Errorf("disk without modes: %+v", d)
	}
	if d := s.Disks[1]; d.Cache != "writeback" || d.Discard != "unmap" {
		t.Errorf("disk with discard: %+v", d)
	}
	if s.RNGEnabled() || s.Interfaces[0].Queues != 0 || s.Graphics != nil {
		t.Errorf("rng %v queues %d graphics %v", s.RNGEnabled(), s.Interfaces[0].Queues, s.Graphics)
	}
}

// QEMU refuses native AIO without O_DIRECT: the host says so before any
// definition, as does a NIC model without multiqueue.
func TestDevicesInvalidCombinations(t *testing.T) {
	spec := devicesSpec()
	spec.Disks[1].Cache = "writeback"
	_, err := buildDomain(spec, domainParams{name: "dev", virtType: "qemu", disks: devicesDisks(spec), meta: &instanceMeta{}, probe: &HostProbe{}})
	mustCode(t, err, api.CodeInvalid)
	if err := api.ValidateVMSpec(spec); !api.IsCode(err, api.CodeInvalid) || !strings.Contains(err.Error(), "native") {
		t.Errorf("ValidateVMSpec: %v", err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*api.VMSpec)
		want string
	}{
		{"queues above vcpu", func(s *api.VMSpec) { s.Interfaces[0].Queues = 3 }, "vCPUs"},
		{"queues on e1000", func(s *api.VMSpec) { s.Interfaces[0].Model = "e1000" }, "virtio"},
		{"listen not an IP", func(s *api.VMSpec) { s.Graphics.Listen = "localhost" }, "IP address"},
		{"unknown type", func(s *api.VMSpec) { s.Graphics.Type = "rdp" }, "graphics.type"},
		{"long VNC password", func(s *api.VMSpec) { s.Graphics.Password = "123456789" }, "at most 8"},
		{"unknown cache", func(s *api.VMSpec) { s.Disks[0].Cache = "writethrough" }, "cache"},
		{"unknown io", func(s *api.VMSpec) { s.Disks[0].IO = "aio" }, "io"},
		{"unknown discard", func(s *api.VMSpec) { s.Disks[0].Discard = "trim" }, "discard"},
	} {
		s := devicesSpec()
		tc.mod(s)
		if err := api.ValidateVMSpec(s); !api.IsCode(err, api.CodeInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	ok := devicesSpec()
	ok.Disks[0].Cache, ok.Disks[0].Discard = "", ""
	ok.Interfaces[0].Queues = 1
	if err := api.ValidateVMSpec(ok); err != nil {
		t.Fatal(err)
	}
	if d := ok.Disks[0]; d.Cache != "none" || d.Discard != "unmap" || ok.Interfaces[0].Queues != 0 || ok.Graphics.Listen != "127.0.0.1" {
		t.Errorf("defaults: %+v %+v", d, ok.Interfaces[0])
	}
}

// A redefinition (the restart path) attaches the I/O thread to a
// virtio-scsi controller libvirt completed earlier, detaches it when no
// SCSI disk is left, and takes console and RNG from the new spec.
func TestDevicesMerge(t *testing.T) {
	cur := &libvirtxml.Domain{Name: "m", Devices: &libvirtxml.DomainDeviceList{
		Controllers: []libvirtxml.DomainController{{Type: "scsi", Model: "virtio-scsi", Alias: &libvirtxml.DomainAlias{Name: "scsi0"}}},
		Videos:      []libvirtxml.DomainVideo{{Model: libvirtxml.DomainVideoModel{Type: "vga"}}},
		Graphics:    []libvirtxml.DomainGraphic{{VNC: &libvirtxml.DomainGraphicVNC{AutoPort: "yes"}}},
	}}
	spec := devicesSpec()
	want, err := buildDomain(spec, domainParams{name: "m", virtType: "qemu", disks: devicesDisks(spec), meta: &instanceMeta{}, probe: &HostProbe{}})
	if err != nil {
		t.Fatal(err)
	}
	n := mergeDomain(cur, want)
	if n.IOThreads != 1 || len(n.Devices.Controllers) != 1 || n.Devices.Controllers[0].Driver == nil || n.Devices.Controllers[0].Driver.IOThread != 1 {
		t.Errorf("iothread not attached: %d %+v", n.IOThreads, n.Devices.Controllers)
	}
	if len(n.Devices.RNGs) != 1 || graphicsPasswd(n) != "s3cret" || len(n.Devices.Videos) != 1 {
		t.Errorf("devices: %+v", n.Devices)
	}
	spec.Disks = spec.Disks[:1]
	spec.Graphics = nil
	want, err = buildDomain(spec, domainParams{name: "m", virtType: "qemu", disks: devicesDisks(spec), meta: &instanceMeta{}, probe: &HostProbe{}})
	if err != nil {
		t.Fatal(err)
	}
	n = mergeDomain(n, want)
	if n.IOThreads != 0 || n.Devices.Controllers[0].Driver.IOThread != 0 {
		t.Errorf("iothread not detached: %d %+v", n.IOThreads, n.Devices.Controllers[0].Driver)
	}
	if len(n.Devices.Graphics) != 0 || len(n.Devices.Videos) != 0 {
		t.Errorf("console left: %+v %+v", n.Devices.Graphics, n.Devices.Videos)
	}
}

// On the test driver: create with every device, read back; the console
// password is in the secure XML only, never in the read-back or its JSON;
// rotating it is no restart; turning rng off is one.
func TestTestDriverDevices(t *testing.T) {
	ctx := context.Background()
	l := openTest(t)
	root, data := uniq("root"), uniq("data")
	for _, v := range []string{root, data} {
		if _, err := l.CreateVolume(ctx, "default", v, api.VolumeSpec{SizeMiB: 10}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.DeleteVolume(ctx, "default", v) })
	}
	spec := devicesSpec()
	spec.Disks[0].Volume, spec.Disks[1].Volume = root, data
	spec.Running = true
	if err := api.ValidateVMSpec(spec); err != nil {
		t.Fatal(err)
	}
	name := uniq("dev")
	vm, err := l.CreateVM(ctx, name, *spec, service.VMMeta{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.DeleteVM(ctx, name, 0) })
	if c := api.HardwareChanges(vm.VMSpec, *spec); len(c) != 0 {
		t.Fatalf("read-back differs in %v: %+v", c, vm.VMSpec)
	}
	if g := vm.Graphics; g == nil || g.Password != "" || g.Type != "vnc" || g.Listen != "127.0.0.1" {
		t.Fatalf("graphics read back %+v", vm.Graphics)
	}
	js, _ := json.Marshal(vm)
	if strings.Contains(string(js), "s3cret") || strings.Contains(string(js), "password") {
		t.Fatalf("password in the read-back: %s", js)
	}
	plain := domainOf(t, l, name)
	if graphicsPasswd(plain) != "" {
		t.Fatalf("password in the non-secure XML")
	}
	secure := func() string {
		var x *libvirtxml.Domain
		if err := l.withDomain(ctx, name, func(_ *libvirt.Connect, d *libvirt.Domain) error {
			var err error
			x, err = domXML(d, libvirt.DOMAIN_XML_INACTIVE|libvirt.DOMAIN_XML_SECURE)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return graphicsPasswd(x)
	}
	if got := secure(); got != "s3cret" {
		t.Fatalf("secure XML password %q", got)
	}

	spec.Graphics.Password = "n3w"
	restarted, err := l.UpdateVM(ctx, name, *spec)
	if err != nil || restarted {
		t.Fatalf("password rotation: restarted %v, %v", restarted, err)
	}
	if got := secure(); got != "n3w" {
		t.Fatalf("password after rotation %q", got)
	}

	no := false
	spec.RNG = &no
	restarted, err = l.UpdateVM(ctx, name, *spec)
	if err != nil || !restarted {
		t.Fatalf("rng off: restarted %v, %v", restarted, err)
	}
	got, err := l.GetVM(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if got.RNGEnabled() || got.Graphics == nil || secure() != "n3w" {
		t.Fatalf("after restart: rng %v graphics %+v", got.RNGEnabled(), got.Graphics)
	}
}
