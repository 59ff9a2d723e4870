package api

import (
	"fmt"
	"regexp"
	"strings"
)

// pciAddressPattern is a PCI address as Linux and libvirt spell it:
// domain:bus:slot.function, hexadecimal (0000:01:00.0).
var pciAddressPattern = regexp.MustCompile(`^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-1][0-9a-fA-F]\.[0-7]$`)

// CanonicalPCIAddress returns addr in the form kvm-hostd reports and stores
// (lower case, 0000:01:00.0), or an error naming the expected form.
func CanonicalPCIAddress(addr string) (string, error) {
	if !pciAddressPattern.MatchString(addr) {
		return "", fmt.Errorf("PCI address %q is not domain:bus:slot.function like 0000:01:00.0 (slot 00-1f, function 0-7)", addr)
	}
	return strings.ToLower(addr), nil
}

// PCIAddress formats the parts of a PCI address canonically.
func PCIAddress(domain, bus, slot, function uint) string {
	return fmt.Sprintf("%04x:%02x:%02x.%x", domain, bus, slot, function)
}

// PCILabelPrefix starts the host label every named PCI device gives its
// host: kvm-hostd --pci-device gpu0=... makes the host carry
// "pci.gpu0" = "true", so kvm_cluster_placement's host_labels can ask for
// a host with that device.
const PCILabelPrefix = "pci."

// PCIDeviceLabel is the host label key of the named PCI device name.
func PCIDeviceLabel(name string) string { return PCILabelPrefix + name }

// ValidatePCIDeviceNames checks a VM's pci_devices: valid names, each once.
// Whether the host has them is the host's to say.
func ValidatePCIDeviceNames(names []string) error {
	seen := map[string]int{}
	for i, n := range names {
		if err := ValidateName("PCI device", n); err != nil {
			return invalidf("pci_devices[%d]: %s", i, err)
		}
		if j, dup := seen[n]; dup {
			return invalidf("pci_devices[%d]: %s is already pci_devices[%d]", i, n, j)
		}
		seen[n] = i
	}
	return nil
}
