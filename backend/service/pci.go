package service

import (
	"context"
	"slices"
	"strings"
	"sync"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// PCIDevice is a host PCI device the operator named for passthrough
// (kvm-hostd --pci-device NAME=ADDRESS). VMs ask for devices by name, so
// one configuration fits every host that has a device of that name, at
// whatever address it sits there.
type PCIDevice struct {
	Name string
	// Address is canonical: 0000:01:00.0.
	Address string
}

func (s *Service) pciByName(name string) (PCIDevice, bool) {
	i := slices.IndexFunc(s.cfg.PCIDevices, func(d PCIDevice) bool { return d.Name == name })
	if i < 0 {
		return PCIDevice{}, false
	}
	return s.cfg.PCIDevices[i], true
}

// pciNames lists the host's device names for error messages.
func (s *Service) pciNames() string {
	if len(s.cfg.PCIDevices) == 0 {
		return "it names none (kvm-hostd --pci-device NAME=ADDRESS names them)"
	}
	names := make([]string, len(s.cfg.PCIDevices))
	for i, d := range s.cfg.PCIDevices {
		names[i] = d.Name
	}
	return "it has " + strings.Join(names, ", ")
}

// hostPCIDevices reports the named devices in the inventory and gives the
// host the label pci.NAME = "true" for each one libvirt knows, so that
// placement can require it. A label the operator set (--labels) wins.
func (s *Service) hostPCIDevices(ctx context.Context, h *api.Host) {
	if len(s.cfg.PCIDevices) == 0 {
		return
	}
	devs, err := s.pciInventory(ctx)
	if err != nil {
		h.Healthy, h.Message = false, "libvirt: listing PCI devices: "+err.Error()
		return
	}
	h.PCIDevices = devs
	for _, d := range devs {
		if _, set := h.Labels[api.PCIDeviceLabel(d.Name)]; !set && d.Present {
			h.Labels[api.PCIDeviceLabel(d.Name)] = "true"
		}
	}
}

// pciInventory joins the named devices with libvirt's node devices and the
// VMs using them.
func (s *Service) pciInventory(ctx context.Context) ([]api.HostPCIDevice, error) {
	nodes, err := s.hv.PCIDevices(ctx)
	if err != nil {
		return nil, err
	}
	users, err := s.pciUsers(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.HostPCIDevice, 0, len(s.cfg.PCIDevices))
	for _, c := range s.cfg.PCIDevices {
		d := api.HostPCIDevice{Address: c.Address, IOMMUGroup: -1}
		if i := slices.IndexFunc(nodes, func(n api.HostPCIDevice) bool { return n.Address == c.Address }); i >= 0 {
			d = nodes[i]
			d.Present = true
		}
		d.Name = c.Name
		d.UsedBy = strings.Join(users[c.Address], ", ")
		out = append(out, d)
	}
	return out, nil
}

// pciUsers maps each PCI address passed through to a domain of this host
// to those domains (defined ones too: a stopped VM keeps its device).
func (s *Service) pciUsers(ctx context.Context) (map[string][]string, error) {
	vms, err := s.hv.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	users := map[string][]string{}
	for _, vm := range vms {
		for _, a := range vm.PCIAddresses {
			users[a] = append(users[a], vm.Name)
		}
	}
	return users, nil
}

// claimPCIDevices resolves spec's device names to this host's addresses
// (spec.PCIAddresses) and refuses a name the host does not have (400), a
// device libvirt does not know (409) and one another VM has (409). The
// returned unlock must be called once the domain is defined: until then no
// other VM can pass the check for the same device.
func (s *Service) claimPCIDevices(ctx context.Context, vm string, spec *api.VMSpec) (func(), error) {
	spec.PCIAddresses = nil
	if len(spec.PCIDevices) == 0 {
		return func() {}, nil
	}
	addrs := make([]string, len(spec.PCIDevices))
	for i, n := range spec.PCIDevices {
		d, ok := s.pciByName(n)
		if !ok {
			return nil, invalid("pci_devices[%d]: host %s has no PCI device named %q; %s", i, s.cfg.Name, n, s.pciNames())
		}
		addrs[i] = d.Address
	}
	unlock := sync.OnceFunc(s.locks.Lock("pci"))
	fail := func(err error) (func(), error) {
		unlock()
		return nil, err
	}
	nodes, err := s.hv.PCIDevices(ctx)
	if err != nil {
		return fail(err)
	}
	for i, a := range addrs {
		if !slices.ContainsFunc(nodes, func(n api.HostPCIDevice) bool { return n.Address == a }) {
			return fail(conflict("pci_devices[%d]: PCI device %s (%s) is not present on host %s: libvirt knows no PCI device at that address",
				i, spec.PCIDevices[i], a, s.cfg.Name))
		}
	}
	users, err := s.pciUsers(ctx)
	if err != nil {
		return fail(err)
	}
	for i, a := range addrs {
		for _, u := range users[a] {
			if u != vm {
				return fail(conflict("pci_devices[%d]: PCI device %s (%s) on host %s is already used by VM %s",
					i, spec.PCIDevices[i], a, s.cfg.Name, u))
			}
		}
	}
	spec.PCIAddresses = addrs
	return unlock, nil
}

// namePCIDevices reads a VM's devices back by this host's current names
// for their addresses; a device the host does not name keeps the name the
// domain was defined with (or its address, for one added outside
// kvm-hostd).
func (s *Service) namePCIDevices(vm *api.VM) {
	if vm == nil {
		return
	}
	for i, a := range vm.PCIAddresses {
		if i >= len(vm.PCIDevices) {
			break
		}
		if j := slices.IndexFunc(s.cfg.PCIDevices, func(d PCIDevice) bool { return d.Address == a }); j >= 0 {
			vm.PCIDevices[i] = s.cfg.PCIDevices[j].Name
		}
	}
}

// refusePCIMigration refuses to migrate a VM with passthrough devices: a
// physical device cannot follow the guest's memory to another machine
// (QEMU cannot migrate VFIO device state), and the domain's host addresses
// mean nothing, or another device, on the target.
func refusePCIMigration(host string, vm *api.VM) error {
	if len(vm.PCIDevices) == 0 {
		return nil
	}
	return conflict("VM %s on host %s has PCI passthrough devices (pci_devices %s) and cannot be migrated: "+
		"remove them first, or re-create the VM on the target (kvm_vm migration = \"replace\")",
		vm.Name, host, strings.Join(vm.PCIDevices, ", "))
}
