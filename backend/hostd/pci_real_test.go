package hostd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"libvirt.org/go/libvirt"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// sysfsPCI is what the kernel says of one PCI device.
type sysfsPCI struct {
	addr, vendor, device, driver string
	iommuGroup                   int64
}

// hostPCIDevice picks a PCI device of this machine that has a driver bound.
func hostPCIDevice(t *testing.T) sysfsPCI {
	t.Helper()
	dirs, _ := filepath.Glob("/sys/bus/pci/devices/*")
	for _, d := range dirs {
		drv, err := os.Readlink(filepath.Join(d, "driver"))
		if err != nil {
			continue
		}
		read := func(f string) string {
			b, _ := os.ReadFile(filepath.Join(d, f))
			return strings.TrimSpace(string(b))
		}
		s := sysfsPCI{addr: filepath.Base(d), vendor: read("vendor"), device: read("device"), driver: filepath.Base(drv), iommuGroup: -1}
		if g, err := os.Readlink(filepath.Join(d, "iommu_group")); err == nil {
			s.iommuGroup, _ = strconv.ParseInt(filepath.Base(g), 10, 64)
		}
		return s
	}
	t.Skip("this machine has no PCI device with a driver bound")
	return sysfsPCI{}
}

// A real kvm-hostd on the system libvirt, naming a PCI device of this
// machine, reports it as libvirt's node devices describe it, and as the
// kernel knows it. No VM is started with it: that would take the device
// from its host driver. A stopped VM is defined with it (libvirt detaches
// a managed device only at start) to see the real libvirt keep the hostdev
// and read it back by name, and the refusals are checked.
func TestPCIDeviceInventoryReal(t *testing.T) {
	dev := hostPCIDevice(t)
	const ghost = "0000:fe:1f.7"
	if _, err := os.Stat("/sys/bus/pci/devices/" + ghost); err == nil {
		t.Skipf("this machine has a device at %s, which the test names as absent", ghost)
	}
	opts := harness.RealOptions(t, harness.Options{
		Hosts:     []string{"pci-real"},
		ExtraArgs: []string{"--pci-device", "dev0=" + strings.ToUpper(dev.addr) + ",ghost=" + ghost},
	})
	c := harness.Start(t, opts)
	cl, err := client.New(client.Options{Endpoint: c.Hosts[0].URL, Token: c.Token})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	logNodeDevice(t, opts.LibvirtURI, dev.addr)

	h, err := cl.Host(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(h.PCIDevices) != 2 {
		t.Fatalf("pci_devices: %+v", h.PCIDevices)
	}
	got := h.PCIDevices[0]
	t.Logf("dev0 as kvm-hostd reports it: %+v", got)
	if got.Name != "dev0" || got.Address != dev.addr || !got.Present || got.VendorID != dev.vendor || got.ProductID != dev.device ||
		got.Driver != dev.driver || got.IOMMUGroup != dev.iommuGroup || got.UsedBy != "" {
		t.Errorf("dev0: %+v; sysfs says %+v", got, dev)
	}
	if got.Vendor == "" {
		t.Logf("libvirt knows no vendor name for %s (no PCI ID database?)", dev.vendor)
	}
	if g := h.PCIDevices[1]; g.Name != "ghost" || g.Present || g.Address != ghost {
		t.Errorf("ghost: %+v", g)
	}
	if h.Labels["pci.dev0"] != "true" || h.Labels["pci.ghost"] != "" {
		t.Errorf("labels: %v", h.Labels)
	}

	name := fmt.Sprintf("pci-real-%d", time.Now().UnixNano()%1e6)
	if _, err := cl.PutVM(ctx, name+"-x", api.VMSpec{VCPU: 1, MemoryMiB: 64, PCIDevices: []string{"ghost"}}); !api.IsCode(err, api.CodeConflict) ||
		!strings.Contains(err.Error(), "not present") {
		t.Errorf("a VM with an absent device: %v", err)
	}
	vm, err := cl.PutVM(ctx, name, api.VMSpec{VCPU: 1, MemoryMiB: 64, Running: false, PCIDevices: []string{"dev0"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.DeleteVM(context.Background(), name, 0) })
	if vm.Running || !slices.Equal(vm.PCIDevices, []string{"dev0"}) {
		t.Fatalf("VM: running %v, pci_devices %v", vm.Running, vm.PCIDevices)
	}
	if h, err = cl.Host(ctx); err != nil || h.PCIDevices[0].UsedBy != name || h.PCIDevices[0].Driver != dev.driver {
		t.Fatalf("after define: %+v, %v", h.PCIDevices, err)
	}
	if _, err := cl.PutVM(ctx, name+"-y", api.VMSpec{VCPU: 1, MemoryMiB: 64, PCIDevices: []string{"dev0"}}); !api.IsCode(err, api.CodeConflict) ||
		!strings.Contains(err.Error(), "already used by VM "+name) {
		t.Errorf("a second VM with dev0: %v", err)
	}
	if err := cl.DeleteVM(ctx, name, 0); err != nil {
		t.Fatal(err)
	}
	if h, err = cl.Host(ctx); err != nil || h.PCIDevices[0].UsedBy != "" || h.PCIDevices[0].Driver != dev.driver {
		t.Fatalf("after delete: %+v, %v", h.PCIDevices, err)
	}
}

// logNodeDevice logs the node device XML of addr as this libvirt writes
// it: a real sample for the inventory's unit tests.
func logNodeDevice(t *testing.T, uri, addr string) {
	conn, err := libvirt.NewConnect(uri)
	if err != nil {
		t.Logf("libvirt %s: %v", uri, err)
		return
	}
	defer conn.Close()
	name := "pci_" + strings.NewReplacer(":", "_", ".", "_").Replace(addr)
	d, err := conn.LookupDeviceByName(name)
	if err != nil {
		t.Logf("node device %s: %v", name, err)
		return
	}
	defer d.Free()
	doc, _ := d.GetXMLDesc(0)
	t.Logf("node device %s:\n%s", name, doc)
}
