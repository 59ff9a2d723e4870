package hypervisor

import (
	"context"
	"fmt"
	"sort"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// metaPCI records the name a VM asked for with the host address it got, so
// that a read-back names the device as it was asked for even where the
// host no longer names that address.
type metaPCI struct {
	Name    string `xml:"name,attr"`
	Address string `xml:"address,attr"`
}

// PCIDevices lists the host's PCI devices from libvirt's node devices.
func (l *Libvirt) PCIDevices(ctx context.Context) ([]api.HostPCIDevice, error) {
	var out []api.HostPCIDevice
	err := l.do(ctx, func(c *libvirt.Connect) error {
		out = nil
		devs, err := c.ListAllNodeDevices(libvirt.CONNECT_LIST_NODE_DEVICES_CAP_PCI_DEV)
		if err != nil {
			return wrap(err, "list PCI node devices")
		}
		defer func() {
			for i := range devs {
				devs[i].Free()
			}
		}()
		for i := range devs {
			doc, err := devs[i].GetXMLDesc(0)
			if err != nil {
				if isCode(err, libvirt.ERR_NO_NODE_DEVICE) {
					continue // unplugged meanwhile
				}
				return wrap(err, "read node device")
			}
			d, ok, err := pciNodeDevice(doc)
			if err != nil {
				return err
			}
			if ok {
				out = append(out, d)
			}
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out, err
}

// pciNodeDevice reads one node device's XML; ok is false for a device
// without the PCI capability or a complete address.
func pciNodeDevice(doc string) (api.HostPCIDevice, bool, error) {
	var x libvirtxml.NodeDevice
	if err := x.Unmarshal(doc); err != nil {
		return api.HostPCIDevice{}, false, fmt.Errorf("parsing node device XML: %w", err)
	}
	p := x.Capability.PCI
	if p == nil || p.Domain == nil || p.Bus == nil || p.Slot == nil || p.Function == nil {
		return api.HostPCIDevice{}, false, nil
	}
	d := api.HostPCIDevice{
		Address: api.PCIAddress(*p.Domain, *p.Bus, *p.Slot, *p.Function),
		Vendor:  p.Vendor.Name, VendorID: p.Vendor.ID,
		Product: p.Product.Name, ProductID: p.Product.ID,
		IOMMUGroup: -1,
		Present:    true,
	}
	if x.Driver != nil {
		d.Driver = x.Driver.Name
	}
	if p.IOMMUGroup != nil {
		d.IOMMUGroup = int64(p.IOMMUGroup.Number)
	}
	return d, true, nil
}

// addPCIHostdevs passes spec's devices through, at the host addresses the
// service resolved, in the order asked. managed='yes': libvirt detaches
// each from its host driver (binding vfio-pci) when the VM starts and
// gives it back when it stops.
func addPCIHostdevs(x *libvirtxml.Domain, spec *api.VMSpec, m *instanceMeta) error {
	m.PCIDevices = nil
	if len(spec.PCIAddresses) != len(spec.PCIDevices) {
		return fmt.Errorf("pci_devices %v were not resolved to host addresses", spec.PCIDevices)
	}
	for i, addr := range spec.PCIAddresses {
		var dom, bus, slot, fn uint
		if _, err := fmt.Sscanf(addr, "%04x:%02x:%02x.%x", &dom, &bus, &slot, &fn); err != nil {
			return fmt.Errorf("pci_devices[%d]: bad host address %q: %w", i, addr, err)
		}
		x.Devices.Hostdevs = append(x.Devices.Hostdevs, libvirtxml.DomainHostdev{
			Managed: "yes",
			SubsysPCI: &libvirtxml.DomainHostdevSubsysPCI{Source: &libvirtxml.DomainHostdevSubsysPCISource{
				Address: &libvirtxml.DomainAddressPCI{Domain: &dom, Bus: &bus, Slot: &slot, Function: &fn},
			}},
		})
		m.PCIDevices = append(m.PCIDevices, metaPCI{Name: spec.PCIDevices[i], Address: addr})
	}
	return nil
}

// pciHostdevAddress is the host address of a PCI passthrough hostdev, or
// "" for any other hostdev.
func pciHostdevAddress(h *libvirtxml.DomainHostdev) string {
	if h.SubsysPCI == nil || h.SubsysPCI.Source == nil {
		return ""
	}
	a := h.SubsysPCI.Source.Address
	if a == nil || a.Bus == nil || a.Slot == nil || a.Function == nil {
		return ""
	}
	var dom uint
	if a.Domain != nil {
		dom = *a.Domain
	}
	return api.PCIAddress(dom, *a.Bus, *a.Slot, *a.Function)
}

// readPCIHostdevs reads the passthrough devices back: each address by the
// name recorded for it, or by the address itself for a device added
// outside kvm-hostd (the service renames what its host names).
func readPCIHostdevs(x *libvirtxml.Domain, m *instanceMeta, s *api.VMSpec) {
	if x.Devices == nil {
		return
	}
	for i := range x.Devices.Hostdevs {
		addr := pciHostdevAddress(&x.Devices.Hostdevs[i])
		if addr == "" {
			continue
		}
		name := addr
		for _, mp := range m.PCIDevices {
			if mp.Address == addr {
				name = mp.Name
				break
			}
		}
		s.PCIDevices = append(s.PCIDevices, name)
		s.PCIAddresses = append(s.PCIAddresses, addr)
	}
}

// mergePCIHostdevs replaces the PCI passthrough hostdevs of cur with
// want's, keeping the guest-side address and alias of a device that stays
// (the guest sees it where it was) and every other kind of hostdev.
func mergePCIHostdevs(cur, want []libvirtxml.DomainHostdev) []libvirtxml.DomainHostdev {
	old := map[string]libvirtxml.DomainHostdev{}
	var out []libvirtxml.DomainHostdev
	for _, h := range cur {
		if a := pciHostdevAddress(&h); a != "" {
			old[a] = h
			continue
		}
		out = append(out, h)
	}
	for _, h := range want {
		if o, ok := old[pciHostdevAddress(&h)]; ok {
			h.Address, h.Alias = o.Address, o.Alias
		}
		out = append(out, h)
	}
	return out
}
