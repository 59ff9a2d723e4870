package service

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/backend/reqtrace"
	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// DefaultShutdownTimeout is the graceful ACPI shutdown window.
const DefaultShutdownTimeout = 60 * time.Second

func validateVMName(name string) error {
	if err := api.ValidateName("VM", name); err != nil {
		return invalid("%s", err)
	}
	return nil
}

// ListVMs lists the host's domains.
func (s *Service) ListVMs(ctx context.Context) ([]api.VM, error) {
	// Concurrent lists share scans (listflight.go).
	return s.vmLists.list(ctx, func(ctx context.Context) ([]api.VM, error) {
		vms, err := s.hv.ListVMs(ctx)
		if err == nil {
			s.fillAllAddresses(ctx, vms)
			for i := range vms {
				s.namePCIDevices(&vms[i])
			}
		}
		return vms, err
	})
}

// GetVM reads a domain.
func (s *Service) GetVM(ctx context.Context, name string) (*api.VM, error) {
	if err := validateVMName(name); err != nil {
		return nil, err
	}
	vm, err := s.hv.GetVM(ctx, name)
	if err == nil {
		s.fillAddresses(ctx, vm, s.neighbourhoodOf(nil))
		s.namePCIDevices(vm)
	}
	return vm, err
}

// resolveInterfaces fills the OVS bridge and VLAN of each NIC from the
// networks realized on this host.
func (s *Service) resolveInterfaces(ctx context.Context, spec *api.VMSpec) error {
	for i := range spec.Interfaces {
		n := &spec.Interfaces[i]
		if s.sw == nil {
			return api.Errorf(api.CodeUnsupported, "this host has no Open vSwitch configured (--ovsdb)")
		}
		net, err := s.sw.GetNetwork(ctx, n.Network)
		if err != nil {
			if api.IsNotFound(err) {
				return api.Errorf(api.CodeNotFound, "network_interfaces[%d]: network %q does not exist on host %s", i, n.Network, s.cfg.Name)
			}
			return err
		}
		n.Bridge, n.VLAN = net.Bridge, net.VLAN
		n.MTU, n.NoChecksumOffload = net.MTU, net.DatapathType == "netdev"
		n.Subnet = nil
		if n.IPv4Address == "" {
			continue
		}
		if net.Subnet == nil || net.Subnet.CIDR == "" {
			return invalid("network_interfaces[%d]: network %s has no subnet; ipv4_address needs one", i, n.Network)
		}
		if err := api.ValidateStaticIPv4(*net.Subnet, n.IPv4Address, net.DHCPServerIP); err != nil {
			return invalid("network_interfaces[%d]: %s (network %s)", i, err, n.Network)
		}
		for j := range i {
			if spec.Interfaces[j].IPv4Address == n.IPv4Address {
				return invalid("network_interfaces[%d]: ipv4_address %s is already network_interfaces[%d]'s", i, n.IPv4Address, j)
			}
		}
		sub := *net.Subnet
		n.Subnet = &sub
	}
	return nil
}

// hasStaticIPv4 reports whether any NIC of spec has a static address.
func hasStaticIPv4(spec api.VMSpec) bool {
	return slices.ContainsFunc(spec.Interfaces, func(n api.VMInterface) bool { return n.IPv4Address != "" })
}

// checkStaticIPv4 refuses a static address another VM of this host already
// has on the same network. The caller holds the "ipv4" lock through the
// define, so two VMs cannot both pass for one address.
func (s *Service) checkStaticIPv4(ctx context.Context, vm string, spec api.VMSpec) error {
	if !hasStaticIPv4(spec) {
		return nil
	}
	vms, err := s.hv.ListVMs(ctx)
	if err != nil {
		return err
	}
	for i, n := range spec.Interfaces {
		if n.IPv4Address == "" {
			continue
		}
		for _, other := range vms {
			if other.Name == vm {
				continue
			}
			for _, o := range other.Interfaces {
				if o.Network == n.Network && o.IPv4Address == n.IPv4Address {
					return conflict("network_interfaces[%d]: ipv4_address %s is already used by VM %s on network %s on host %s",
						i, n.IPv4Address, other.Name, n.Network, s.cfg.Name)
				}
			}
		}
	}
	return nil
}

// claimDisks claims the volumes spec attaches that the VM does not attach
// yet (all of them for a create), from the check through the define, so
// two VMs cannot both pass the check for one volume.
func (s *Service) claimDisks(vm string, spec api.VMSpec, cur *api.VMSpec) (func(), error) {
	var keys [][2]string
	for _, d := range spec.Disks {
		if cur == nil || !slices.ContainsFunc(cur.Disks, func(c api.VMDisk) bool { return c.Pool == d.Pool && c.Volume == d.Volume }) {
			keys = append(keys, [2]string{d.Pool, d.Volume})
		}
	}
	return s.lockVolumes(keys, "being attached to VM "+vm)
}

// checkDisks verifies every disk exists; one that vm does not attach yet
// (all for a create; cur is the VM's current spec otherwise) must not be
// attached to another VM, being written by an operation, or the base of
// linked clones: a guest writing to a base corrupts every clone.
func (s *Service) checkDisks(ctx context.Context, vm string, spec api.VMSpec, cur *api.VMSpec) error {
	for i, d := range spec.Disks {
		if err := s.poolServed(d.Pool); err != nil {
			return api.Errorf(api.CodeNotFound, "disks[%d]: %s", i, s.notServed(d.Pool))
		}
		attached := cur != nil && slices.ContainsFunc(cur.Disks, func(c api.VMDisk) bool { return c.Pool == d.Pool && c.Volume == d.Volume })
		if attached {
			if _, err := s.hv.GetVolume(ctx, d.Pool, d.Volume); err != nil {
				if api.IsNotFound(err) {
					return api.Errorf(api.CodeNotFound, "disks[%d]: volume %s/%s does not exist on host %s", i, d.Pool, d.Volume, s.cfg.Name)
				}
				return err
			}
			continue
		}
		users, children, err := s.hv.VolumeUsage(ctx, d.Pool, d.Volume)
		if err != nil {
			if api.IsNotFound(err) {
				return api.Errorf(api.CodeNotFound, "disks[%d]: volume %s/%s does not exist on host %s", i, d.Pool, d.Volume, s.cfg.Name)
			}
			return err
		}
		for _, u := range users {
			if u != vm {
				return conflict("disks[%d]: volume %s/%s is already attached to VM %s", i, d.Pool, d.Volume, u)
			}
		}
		if len(children) > 0 {
			return conflict("disks[%d]: volume %s/%s is the base of linked clone(s) %s; attaching it read-write would corrupt them",
				i, d.Pool, d.Volume, strings.Join(children, ", "))
		}
		if op := s.ops.running(volumeTarget(d.Pool, d.Volume)); op != nil {
			return conflict("disks[%d]: volume %s/%s is still being written (%s operation %s)", i, d.Pool, d.Volume, op.Kind, op.ID)
		}
	}
	return nil
}

func vmMemory(spec api.VMSpec) int64 { return api.VMMemoryMiB(spec) }

// PutVM creates a domain. A domain that exists with the same spec is
// returned as is (a retried create), one with a different spec is a
// conflict: PUT never silently changes a VM.
func (s *Service) PutVM(ctx context.Context, name string, spec api.VMSpec, meta VMMeta) (vm *api.VM, created bool, err error) {
	defer s.dhcpChanged() // the host's DHCP reservations follow its VMs
	if err := validateVMName(name); err != nil {
		return nil, false, err
	}
	// Defaults and every rule, before libvirt is touched.
	if err := api.ValidateVMSpec(&spec); err != nil {
		return nil, false, err
	}
	endLock := reqtrace.Start(ctx, "lock")
	unlock := s.locks.Lock("vm/" + name)
	endLock()
	defer unlock()
	defer func() { s.namePCIDevices(vm) }()
	// The answer is what a GET would say (addresses included), so the
	// provider needs no read-back after a create.
	defer func() {
		if err == nil {
			s.fillAddresses(ctx, vm, s.neighbourhoodOf(nil))
		}
	}()

	endLookup := reqtrace.Start(ctx, "lookup")
	existing, err := s.hv.GetVM(ctx, name)
	endLookup()
	switch {
	case err == nil:
		s.namePCIDevices(existing)
		if diff := vmSpecDiff(spec, existing.VMSpec); diff != "" {
			return nil, false, conflict("VM %s already exists on host %s with a different %s", name, s.cfg.Name, diff)
		}
		if spec.Running && existing.State == api.StateShutoff {
			// A create that died between define and start (kvm-hostd
			// crashed) left the domain defined: the retry finishes it.
			if err := s.hv.StartVM(ctx, name); err != nil {
				return nil, false, fmt.Errorf("starting VM %s: %w", name, err)
			}
			vm, err := s.hv.GetVM(ctx, name)
			return vm, false, err
		}
		return existing, false, nil
	case !api.IsNotFound(err):
		return nil, false, err
	}
	if err := s.resolveInterfaces(ctx, &spec); err != nil {
		return nil, false, err
	}
	unlockIP := func() {}
	if hasStaticIPv4(spec) {
		unlockIP = sync.OnceFunc(s.locks.Lock("ipv4"))
		defer unlockIP()
		if err := s.checkStaticIPv4(ctx, name, spec); err != nil {
			return nil, false, err
		}
	}
	unlockPCI, err := s.claimPCIDevices(ctx, name, &spec)
	if err != nil {
		return nil, false, err
	}
	defer unlockPCI()
	unclaim, err := s.claimDisks(name, spec, nil)
	if err != nil {
		return nil, false, err
	}
	defer unclaim()
	if err := s.checkDisks(ctx, name, spec, nil); err != nil {
		return nil, false, err
	}
	if err := s.checkMemoryLayout(ctx, spec); err != nil {
		return nil, false, err
	}
	endAdmit := reqtrace.Start(ctx, "admit")
	r, err := s.admit(ctx, name, reserveCreate, Allocation{VCPU: spec.VCPU, MemoryMiB: vmMemory(spec), HugepageMiB: hugepageAllocation(spec)}, 0)
	endAdmit()
	if err != nil {
		return nil, false, err
	}
	// The reservation counts until the domain is defined, which makes it
	// count itself. Starting QEMU is the slow part and happens after, so
	// creates on one host proceed in parallel.
	defined := spec
	defined.Running = false
	crashpoint(CrashVMCreate)
	endDefine := reqtrace.Start(ctx, "define")
	vm, err = s.hv.CreateVM(ctx, name, defined, meta)
	endDefine()
	unlockIP()  // defined: the address shows as used from now on
	unlockPCI() // and so do its PCI devices
	s.release(r)
	unclaim() // defined: the disks show as attached from now on
	if err != nil {
		return nil, false, err
	}
	crashpoint(CrashVMDefined)
	if spec.Running {
		endStart := reqtrace.Start(ctx, "start")
		err := s.hv.StartVM(ctx, name)
		endStart()
		if err != nil {
			// Leave nothing behind, so a retried create starts clean.
			if derr := s.hv.DeleteVM(context.WithoutCancel(ctx), name, 0); derr != nil {
				s.log.Error("removing VM that failed to start", "vm", name, "error", derr)
			}
			return nil, false, fmt.Errorf("starting VM %s: %w", name, err)
		}
		endRead := reqtrace.Start(ctx, "readback")
		vm, err = s.hv.GetVM(ctx, name)
		endRead()
		if err != nil {
			return nil, false, err
		}
	}
	if s.sw != nil && len(spec.Interfaces) > 0 && !s.hv.ManagesSwitchPorts() {
		defer reqtrace.Start(ctx, "ports")()
		if err := s.sw.AttachVMPorts(ctx, name, vm.Interfaces); err != nil {
			return nil, true, fmt.Errorf("VM %s was created but its switch ports were not: %w", name, err)
		}
	}
	crashpoint(CrashVMStarted)
	return vm, true, nil
}

// firmwareOf is a spec's firmware, "" meaning the default.
func firmwareOf(s api.VMSpec) string {
	if s.Firmware == "" {
		return api.FirmwareBIOS
	}
	return s.Firmware
}

// vmSpecDiff names the first difference between a requested and an
// existing spec, ignoring what the host fills in (generated MACs, bridges,
// targets), or "" when a create request matches the domain.
func vmSpecDiff(want, have api.VMSpec) string {
	switch {
	case want.VCPU != have.VCPU:
		return fmt.Sprintf("vcpu (%d, requested %d)", have.VCPU, want.VCPU)
	case want.MemoryMiB != have.MemoryMiB:
		return fmt.Sprintf("memory_mib (%d, requested %d)", have.MemoryMiB, want.MemoryMiB)
	case want.MaxMemoryMiB != 0 && want.MaxMemoryMiB != have.MaxMemoryMiB:
		return fmt.Sprintf("max_memory_mib (%d, requested %d)", have.MaxMemoryMiB, want.MaxMemoryMiB)
	case len(want.Disks) != len(have.Disks):
		return fmt.Sprintf("number of disks (%d, requested %d)", len(have.Disks), len(want.Disks))
	case len(want.Interfaces) != len(have.Interfaces):
		return fmt.Sprintf("number of network interfaces (%d, requested %d)", len(have.Interfaces), len(want.Interfaces))
	case want.Description != have.Description:
		return "description"
	case !maps.Equal(want.Tags, have.Tags) && (len(want.Tags) > 0 || len(have.Tags) > 0):
		return "tags"
	case want.GuestAgentEnabled() != have.GuestAgentEnabled():
		return "guest_agent"
	case !slices.Equal(want.PCIDevices, have.PCIDevices):
		return fmt.Sprintf("pci_devices (%v, requested %v)", have.PCIDevices, want.PCIDevices)
	case firmwareOf(want) != firmwareOf(have):
		return fmt.Sprintf("firmware (%s, requested %s)", firmwareOf(have), firmwareOf(want))
	case want.SecureBoot != have.SecureBoot:
		return "secure_boot"
	case (want.TPM == nil) != (have.TPM == nil) || want.TPM != nil && want.TPM.Version != have.TPM.Version:
		return "tpm"
	}
	for i := range want.Disks {
		if want.Disks[i].Pool != have.Disks[i].Pool || want.Disks[i].Volume != have.Disks[i].Volume {
			return fmt.Sprintf("disks[%d] (%s/%s, requested %s/%s)", i, have.Disks[i].Pool, have.Disks[i].Volume, want.Disks[i].Pool, want.Disks[i].Volume)
		}
	}
	for i := range want.Interfaces {
		w, h := want.Interfaces[i], have.Interfaces[i]
		if w.Network != h.Network || (w.MAC != "" && !strings.EqualFold(w.MAC, h.MAC)) || w.IPv4Address != h.IPv4Address {
			return fmt.Sprintf("network_interfaces[%d]", i)
		}
	}
	return ""
}

// UpdateVM converges a domain to spec: live where libvirt can, otherwise
// with one graceful restart that the response reports.
func (s *Service) UpdateVM(ctx context.Context, name string, spec api.VMSpec) (*api.VM, error) {
	defer s.dhcpChanged() // the host's DHCP reservations follow its VMs
	if err := validateVMName(name); err != nil {
		return nil, err
	}
	if err := api.ValidateVMSpec(&spec); err != nil {
		return nil, err
	}
	unlock := s.locks.Lock("vm/" + name)
	defer unlock()
	cur, err := s.hv.GetVM(ctx, name)
	if err != nil {
		return nil, err
	}
	if err := refuseUnmodelledDevices(cur); err != nil {
		return nil, err
	}
	if err := s.resolveInterfaces(ctx, &spec); err != nil {
		return nil, err
	}
	unlockIP := func() {}
	if hasStaticIPv4(spec) {
		unlockIP = sync.OnceFunc(s.locks.Lock("ipv4"))
		defer unlockIP()
		if err := s.checkStaticIPv4(ctx, name, spec); err != nil {
			return nil, err
		}
	}
	unlockPCI, err := s.claimPCIDevices(ctx, name, &spec)
	if err != nil {
		return nil, err
	}
	defer unlockPCI()
	unclaim, err := s.claimDisks(name, spec, &cur.VMSpec)
	if err != nil {
		return nil, err
	}
	defer unclaim()
	if err := s.checkDisks(ctx, name, spec, &cur.VMSpec); err != nil {
		return nil, err
	}
	if err := s.checkMemoryLayout(ctx, spec); err != nil {
		return nil, err
	}
	// A grow is admitted and held until libvirt counts it: after a running
	// domain's restart, which hv.UpdateVM waits for.
	// Huge pages are admitted only when the VM takes more of them than
	// it has (like memory), so a stopped hugepage VM on a host short of
	// pages can still be retagged.
	hugeMiB := hugepageAllocation(spec)
	if cur.Hugepages && hugeMiB <= vmMemory(cur.VMSpec) {
		hugeMiB = 0
	}
	r, err := s.admit(ctx, name, reserveUpdate, Allocation{VCPU: spec.VCPU, MemoryMiB: vmMemory(spec), HugepageMiB: hugeMiB}, 0)
	if err != nil {
		return nil, err
	}
	delaypoint(DelayVMUpdateAdmitted)
	restarted, err := s.hv.UpdateVM(ctx, name, spec)
	unlockIP()
	unlockPCI()
	s.release(r)
	unclaim()
	if err != nil {
		return nil, err
	}
	vm, err := s.hv.GetVM(ctx, name)
	if err != nil {
		return nil, err
	}
	if s.sw != nil && !s.hv.ManagesSwitchPorts() {
		if err := s.sw.DetachVMPorts(ctx, name); err != nil {
			return nil, err
		}
		if len(vm.Interfaces) > 0 {
			if err := s.sw.AttachVMPorts(ctx, name, vm.Interfaces); err != nil {
				return nil, err
			}
		}
	}
	s.namePCIDevices(vm)
	vm.Restarted = restarted
	return vm, nil
}

// DeleteVM stops and undefines a domain; its volumes stay.
func (s *Service) DeleteVM(ctx context.Context, name string, shutdownTimeout time.Duration) error {
	defer s.dhcpChanged() // the host's DHCP reservations follow its VMs
	if err := validateVMName(name); err != nil {
		return err
	}
	unlock := s.locks.Lock("vm/" + name)
	defer unlock()
	if err := s.hv.DeleteVM(ctx, name, shutdownTimeout); err != nil {
		return err
	}
	if s.sw != nil && !s.hv.ManagesSwitchPorts() {
		return s.sw.DetachVMPorts(ctx, name)
	}
	return nil
}
