package hostd

import (
	"errors"
	"fmt"
	"strings"

	"github.com/kvmfleet/terraform-provider-kvm/backend/service"
	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// pciDeviceFlag is --pci-device NAME=ADDRESS: repeatable, and each value
// may hold several comma-separated pairs (as KVM_HOSTD_PCI_DEVICE does).
// Values from the environment are replaced, not extended, by the first one
// on the command line, so that a flag on the command line wins as it does
// for every other flag.
type pciDeviceFlag struct {
	raw     []string
	fromEnv bool
}

func (f *pciDeviceFlag) String() string {
	if f == nil {
		return ""
	}
	return strings.Join(f.raw, ",")
}

func (f *pciDeviceFlag) Set(v string) error {
	if f.fromEnv {
		f.raw, f.fromEnv = nil, false
	}
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			f.raw = append(f.raw, p)
		}
	}
	return nil
}

// ParsePCIDevices checks NAME=ADDRESS pairs: names follow the object name
// rules (a VM's pci_devices and the host label pci.NAME use them),
// addresses are domain:bus:slot.function, and neither repeats.
func ParsePCIDevices(pairs []string) ([]service.PCIDevice, error) {
	var out []service.PCIDevice
	var errs []error
	names, addrs := map[string]bool{}, map[string]string{}
	for _, p := range pairs {
		name, addr, ok := strings.Cut(p, "=")
		if !ok {
			errs = append(errs, fmt.Errorf("--pci-device %q is not NAME=ADDRESS (e.g. gpu0=0000:01:00.0)", p))
			continue
		}
		if err := api.ValidateName("PCI device", name); err != nil {
			errs = append(errs, fmt.Errorf("--pci-device %q: %v", p, err))
			continue
		}
		canon, err := api.CanonicalPCIAddress(addr)
		if err != nil {
			errs = append(errs, fmt.Errorf("--pci-device %q: %v", p, err))
			continue
		}
		if names[name] {
			errs = append(errs, fmt.Errorf("--pci-device: name %s is given twice", name))
			continue
		}
		if other, dup := addrs[canon]; dup {
			errs = append(errs, fmt.Errorf("--pci-device: address %s is named both %s and %s", canon, other, name))
			continue
		}
		names[name], addrs[canon] = true, name
		out = append(out, service.PCIDevice{Name: name, Address: canon})
	}
	return out, errors.Join(errs...)
}
