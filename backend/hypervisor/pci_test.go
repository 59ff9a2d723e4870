package hypervisor

import (
	"context"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"testing"

	"libvirt.org/go/libvirtxml"

	"github.com/kvmfleet/terraform-provider-kvm/backend/service"
	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// Node device XML as libvirt's udev backend writes it (virsh
// nodedev-dumpxml), for the cases an inventory meets.
func TestPCINodeDeviceXML(t *testing.T) {
	for _, tc := range []struct {
		name string
		doc  string
		ok   bool
		want api.HostPCIDevice
	}{{
		name: "GPU bound to its driver, in an IOMMU group",
		doc: `<device>
  <name>pci_0000_01_00_0</name>
  <path>/sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0</path>
  <parent>pci_0000_00_01_0</parent>
  <driver>
    <name>nvidia</name>
  </driver>
  <capability type='pci'>
    <class>0x030200</class>
    <domain>0</domain>
    <bus>1</bus>
    <slot>0</slot>
    <function>0</function>
    <product id='0x1eb8'>TU104GL [Tesla T4]</product>
    <vendor id='0x10de'>NVIDIA Corporation</vendor>
    <iommuGroup number='12'>
      <address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </iommuGroup>
    <numa node='0'/>
    <pci-express>
      <link validity='cap' port='0' speed='8' width='16'/>
      <link validity='sta' speed='8' width='16'/>
    </pci-express>
  </capability>
</device>`,
		ok: true,
		want: api.HostPCIDevice{Address: "0000:01:00.0", Vendor: "NVIDIA Corporation", VendorID: "0x10de",
			Product: "TU104GL [Tesla T4]", ProductID: "0x1eb8", Driver: "nvidia", IOMMUGroup: 12, Present: true},
	}, {
		name: "NIC function already on vfio-pci, with SR-IOV capability, hex bus and function",
		doc: `<device>
  <name>pci_0000_3b_00_1</name>
  <path>/sys/devices/pci0000:3a/0000:3a:00.0/0000:3b:00.1</path>
  <parent>pci_0000_3a_00_0</parent>
  <driver>
    <name>vfio-pci</name>
  </driver>
  <capability type='pci'>
    <class>0x020000</class>
    <domain>0</domain>
    <bus>59</bus>
    <slot>0</slot>
    <function>1</function>
    <product id='0x1572'>Ethernet Controller X710 for 10GbE SFP+</product>
    <vendor id='0x8086'>Intel Corporation</vendor>
    <capability type='virt_functions' maxCount='64'/>
    <iommuGroup number='40'>
      <address domain='0x0000' bus='0x3b' slot='0x00' function='0x1'/>
    </iommuGroup>
  </capability>
</device>`,
		ok: true,
		want: api.HostPCIDevice{Address: "0000:3b:00.1", Vendor: "Intel Corporation", VendorID: "0x8086",
			Product: "Ethernet Controller X710 for 10GbE SFP+", ProductID: "0x1572", Driver: "vfio-pci", IOMMUGroup: 40, Present: true},
	}, {
		name: "virtio device on a host without an IOMMU",
		doc: `<device>
  <name>pci_0000_00_03_0</name>
  <path>/sys/devices/pci0000:00/0000:00:03.0</path>
  <parent>computer</parent>
  <driver>
    <name>virtio-pci</name>
  </driver>
  <capability type='pci'>
    <class>0x020000</class>
    <domain>0</domain>
    <bus>0</bus>
    <slot>3</slot>
    <function>0</function>
    <product id='0x1041'>Virtio 1.0 network device</product>
    <vendor id='0x1af4'>Red Hat, Inc.</vendor>
  </capability>
</device>`,
		ok: true,
		want: api.HostPCIDevice{Address: "0000:00:03.0", Vendor: "Red Hat, Inc.", VendorID: "0x1af4",
			Product: "Virtio 1.0 network device", ProductID: "0x1041", Driver: "virtio-pci", IOMMUGroup: -1, Present: true},
	}, {
		// As libvirt 9.0 on a Debian 12 VM wrote it: no PCI ID database,
		// so IDs without names, and no IOMMU.
		name: "virtio device without names or IOMMU group, from a real libvirt",
		doc: `<device>
  <name>pci_0000_00_01_0</name>
  <path>/sys/devices/pci0000:00/0000:00:01.0</path>
  <parent>computer</parent>
  <driver>
    <name>virtio-pci</name>
  </driver>
  <capability type='pci'>
    <class>0xffff00</class>
    <domain>0</domain>
    <bus>0</bus>
    <slot>1</slot>
    <function>0</function>
    <product id='0x1045'/>
    <vendor id='0x1af4'/>
  </capability>
</device>`,
		ok: true,
		want: api.HostPCIDevice{Address: "0000:00:01.0", VendorID: "0x1af4", ProductID: "0x1045", Driver: "virtio-pci",
			IOMMUGroup: -1, Present: true},
	}, {
		name: "no driver bound, unnamed product, non-zero PCI domain",
		doc: `<device>
  <name>pci_0001_00_1f_7</name>
  <parent>computer</parent>
  <capability type='pci'>
    <domain>1</domain>
    <bus>0</bus>
    <slot>31</slot>
    <function>7</function>
    <product id='0xabcd'/>
    <vendor id='0x1d0f'>Amazon.com, Inc.</vendor>
    <iommuGroup number='0'>
      <address domain='0x0001' bus='0x00' slot='0x1f' function='0x7'/>
    </iommuGroup>
  </capability>
</device>`,
		ok: true,
		want: api.HostPCIDevice{Address: "0001:00:1f.7", Vendor: "Amazon.com, Inc.", VendorID: "0x1d0f",
			ProductID: "0xabcd", IOMMUGroup: 0, Present: true},
	}, {
		name: "not a PCI device",
		doc: `<device>
  <name>usb_1_1</name>
  <parent>usb_usb1</parent>
  <driver><name>usb</name></driver>
  <capability type='usb_device'>
    <bus>1</bus>
    <device>2</device>
    <product id='0x0001'>QEMU USB Tablet</product>
    <vendor id='0x0627'>Adomax Technology Co., Ltd</vendor>
  </capability>
</device>`,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok, err := pciNodeDevice(tc.doc)
			if err != nil {
				t.Fatal(err)
			}
			if ok != tc.ok || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v (ok %v), want %+v (ok %v)", got, ok, tc.want, tc.ok)
			}
		})
	}
	if _, _, err := pciNodeDevice("<device><name>"); err == nil {
		t.Fatal("broken XML parsed")
	}
}

// The hostdevs a spec asks for, in order, and their read-back by name.
func TestPCIHostdevXMLRoundTrip(t *testing.T) {
	spec := api.VMSpec{VCPU: 1, MemoryMiB: 64, PCIDevices: []string{"nic1", "gpu0"},
		PCIAddresses: []string{"0000:3b:00.1", "0000:01:00.0"}}
	x, err := buildDomain(&spec, domainParams{name: "vm", virtType: "kvm", meta: &instanceMeta{}})
	if err != nil {
		t.Fatal(err)
	}
	doc, err := x.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`<hostdev mode="subsystem" type="pci" managed="yes">`,
		`<address domain="0x0000" bus="0x3b" slot="0x00" function="0x1"></address>`,
		`<address domain="0x0000" bus="0x01" slot="0x00" function="0x0"></address>`,
		`<pci-devices><device name="nic1" address="0000:3b:00.1"></device><device name="gpu0" address="0000:01:00.0"></device></pci-devices>`,
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("domain XML lacks %s:\n%s", want, doc)
		}
	}
	var back libvirtxml.Domain
	if err := back.Unmarshal(doc); err != nil {
		t.Fatal(err)
	}
	got, _ := specOf(&back, nil)
	if !slices.Equal(got.PCIDevices, spec.PCIDevices) || !slices.Equal(got.PCIAddresses, spec.PCIAddresses) {
		t.Fatalf("read back %v at %v, want %v at %v", got.PCIDevices, got.PCIAddresses, spec.PCIDevices, spec.PCIAddresses)
	}

	// A hostdev added outside kvm-hostd reads back as its address; other
	// kinds of hostdev are not PCI devices.
	dom, bus, slot, fn := uint(0), uint(2), uint(3), uint(4)
	back.Devices.Hostdevs = append(back.Devices.Hostdevs,
		libvirtxml.DomainHostdev{SubsysPCI: &libvirtxml.DomainHostdevSubsysPCI{Source: &libvirtxml.DomainHostdevSubsysPCISource{
			Address: &libvirtxml.DomainAddressPCI{Domain: &dom, Bus: &bus, Slot: &slot, Function: &fn}}}},
		libvirtxml.DomainHostdev{SubsysUSB: &libvirtxml.DomainHostdevSubsysUSB{}})
	got, _ = specOf(&back, nil)
	if want := []string{"nic1", "gpu0", "0000:02:03.4"}; !slices.Equal(got.PCIDevices, want) {
		t.Fatalf("read back %v, want %v", got.PCIDevices, want)
	}

	// An update keeps the guest address of a device that stays and other
	// hostdevs, and drops the PCI devices no longer wanted.
	guest := &libvirtxml.DomainAddress{PCI: &libvirtxml.DomainAddressPCI{Domain: &dom, Bus: &bus, Slot: &slot, Function: &fn}}
	back.Devices.Hostdevs[1].Address = guest
	only := api.VMSpec{VCPU: 1, MemoryMiB: 64, PCIDevices: []string{"gpu0"}, PCIAddresses: []string{"0000:01:00.0"}}
	want, err := buildDomain(&only, domainParams{name: "vm", virtType: "kvm", meta: &instanceMeta{}})
	if err != nil {
		t.Fatal(err)
	}
	merged := mergeDomain(&back, want)
	if n := len(merged.Devices.Hostdevs); n != 2 || merged.Devices.Hostdevs[0].SubsysUSB == nil ||
		merged.Devices.Hostdevs[1].Address != guest {
		t.Fatalf("merged hostdevs: %+v", merged.Devices.Hostdevs)
	}

	// A spec whose names the service did not resolve is a bug, not a VM
	// without devices.
	if _, err := buildDomain(&api.VMSpec{VCPU: 1, MemoryMiB: 64, PCIDevices: []string{"gpu0"}},
		domainParams{name: "vm", virtType: "kvm", meta: &instanceMeta{}}); err == nil {
		t.Fatal("unresolved pci_devices accepted")
	}
}

// libvirt's test driver, given node devices in its definition: the
// inventory, a domain with hostdevs, its read-back and an update that
// removes one.
func TestTestDriverPCIDevices(t *testing.T) {
	ctx := context.Background()
	uri, err := harness.WriteTestDriverPCI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	l, err := Open(uri, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	if err := l.EnsurePool(ctx, "default", "/default-pool"); err != nil {
		t.Fatal(err)
	}
	devs, err := l.PCIDevices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, d := range devs {
		addrs = append(addrs, d.Address)
	}
	if want := []string{"0000:00:1f.3", "0000:01:00.0", "0000:3b:00.1"}; !slices.Equal(addrs, want) {
		t.Fatalf("PCI devices %v, want %v", addrs, want)
	}
	if d := devs[1]; d.Vendor != "NVIDIA Corporation" || d.ProductID != "0x1eb8" || d.IOMMUGroup != 12 || !d.Present {
		t.Fatalf("GPU: %+v", d)
	}
	if devs[0].IOMMUGroup != -1 {
		t.Fatalf("audio device without IOMMU group: %+v", devs[0])
	}

	spec := api.VMSpec{VCPU: 1, MemoryMiB: 64, Running: true, PCIDevices: []string{"gpu0", "nic1"},
		PCIAddresses: []string{"0000:01:00.0", "0000:3b:00.1"}}
	if _, err := l.CreateVM(ctx, "pci-vm", spec, service.VMMeta{}); err != nil {
		t.Fatal(err)
	}
	if err := l.StartVM(ctx, "pci-vm"); err != nil {
		t.Fatal(err)
	}
	vm, err := l.GetVM(ctx, "pci-vm")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(vm.PCIDevices, spec.PCIDevices) || !slices.Equal(vm.PCIAddresses, spec.PCIAddresses) {
		t.Fatalf("read back %v at %v", vm.PCIDevices, vm.PCIAddresses)
	}
	if len(api.HardwareChanges(vm.VMSpec, spec)) != 0 {
		t.Fatalf("read-back differs: %v", api.HardwareChanges(vm.VMSpec, spec))
	}

	spec.PCIDevices, spec.PCIAddresses = []string{"gpu0"}, []string{"0000:01:00.0"}
	restarted, err := l.UpdateVM(ctx, "pci-vm", spec)
	if err != nil {
		t.Fatal(err)
	}
	if !restarted {
		t.Fatal("removing a PCI device did not restart the VM")
	}
	vm, err = l.GetVM(ctx, "pci-vm")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(vm.PCIDevices, []string{"gpu0"}) || vm.State != api.StateRunning {
		t.Fatalf("after update: %v, %s", vm.PCIDevices, vm.State)
	}
	if err := l.DeleteVM(ctx, "pci-vm", 0); err != nil {
		t.Fatal(err)
	}
}
