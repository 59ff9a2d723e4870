package service

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"time"

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
func (s *Service) ListVMs(ctx context.Context) ([]api.VM, error) { return s.hv.ListVMs(ctx) }

// GetVM reads a domain.
func (s *Service) GetVM(ctx context.Context, name string) (*api.VM, error) {
	if err := validateVMName(name); err != nil {
		return nil, err
	}
	return s.hv.GetVM(ctx, name)
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
	}
	return nil
}

// checkDisks verifies every disk exists and is not attached to another VM.
func (s *Service) checkDisks(ctx context.Context, vm string, spec api.VMSpec) error {
	if len(spec.Disks) == 0 {
		return nil
	}
	// One scan of the domains serves every disk; the pools are not
	// scanned, which matters when many VMs are created at once.
	users, err := s.hv.DiskUsers(ctx)
	if err != nil {
		return err
	}
	for i, d := range spec.Disks {
		v, err := s.hv.GetVolume(ctx, d.Pool, d.Volume)
		if err != nil {
			if api.IsNotFound(err) {
				return api.Errorf(api.CodeNotFound, "disks[%d]: volume %s/%s does not exist on host %s", i, d.Pool, d.Volume, s.cfg.Name)
			}
			return err
		}
		for _, u := range users[v.Path] {
			if u != vm {
				return conflict("disks[%d]: volume %s/%s is already attached to VM %s", i, d.Pool, d.Volume, u)
			}
		}
		if op := s.ops.running(volumeTarget(d.Pool, d.Volume)); op != nil {
			return conflict("disks[%d]: volume %s/%s is still being downloaded", i, d.Pool, d.Volume)
		}
	}
	return nil
}

// admit checks that adding (vcpu, memMiB) to the host stays within its
// overcommitted capacity. Callers hold s.admission, so two concurrent
// creates cannot both pass on the last free slot.
func (s *Service) admit(ctx context.Context, vm string, addVCPU, addMemMiB int64) error {
	if addVCPU <= 0 && addMemMiB <= 0 {
		return nil
	}
	res, err := s.hv.Resources(ctx)
	if err != nil {
		return err
	}
	capVCPU := api.Capacity(res.CPUs, s.cfg.CPUOvercommit)
	capMem := api.Capacity(res.MemoryMiB, s.cfg.MemoryOvercommit)
	if addVCPU > 0 && res.AllocatedVCPU+addVCPU > capVCPU {
		return api.Errorf(api.CodeFull, "host %s is full: VM %s needs %d vCPU but only %d of %d are free (%d CPUs × cpu_overcommit %g, %d allocated)",
			s.cfg.Name, vm, addVCPU, max(capVCPU-res.AllocatedVCPU, 0), capVCPU, res.CPUs, s.cfg.CPUOvercommit, res.AllocatedVCPU)
	}
	if addMemMiB > 0 && res.AllocatedMemoryMiB+addMemMiB > capMem {
		return api.Errorf(api.CodeFull, "host %s is full: VM %s needs %d MiB of memory but only %d of %d MiB are free (%d MiB × memory_overcommit %g, %d MiB allocated)",
			s.cfg.Name, vm, addMemMiB, max(capMem-res.AllocatedMemoryMiB, 0), capMem, res.MemoryMiB, s.cfg.MemoryOvercommit, res.AllocatedMemoryMiB)
	}
	return nil
}

func vmMemory(spec api.VMSpec) int64 { return api.VMMemoryMiB(spec) }

// PutVM creates a domain. A domain that exists with the same spec is
// returned as is (a retried create), one with a different spec is a
// conflict: PUT never silently changes a VM.
func (s *Service) PutVM(ctx context.Context, name string, spec api.VMSpec, meta VMMeta) (vm *api.VM, created bool, err error) {
	if err := validateVMName(name); err != nil {
		return nil, false, err
	}
	// Defaults and every rule, before libvirt is touched.
	if err := api.ValidateVMSpec(&spec); err != nil {
		return nil, false, err
	}
	unlock := s.locks.Lock("vm/" + name)
	defer unlock()

	existing, err := s.hv.GetVM(ctx, name)
	switch {
	case err == nil:
		if diff := vmSpecDiff(spec, existing.VMSpec); diff != "" {
			return nil, false, conflict("VM %s already exists on host %s with a different %s", name, s.cfg.Name, diff)
		}
		return existing, false, nil
	case !api.IsNotFound(err):
		return nil, false, err
	}
	if err := s.resolveInterfaces(ctx, &spec); err != nil {
		return nil, false, err
	}
	if err := s.checkDisks(ctx, name, spec); err != nil {
		return nil, false, err
	}
	s.admission.Lock()
	if err := s.admit(ctx, name, spec.VCPU, vmMemory(spec)); err != nil {
		s.admission.Unlock()
		return nil, false, err
	}
	// Only define under the admission lock: a defined domain already counts
	// in the host's allocation, so the next admission check sees it. Starting
	// QEMU is the slow part and runs outside the lock, so creates on one host
	// proceed in parallel.
	defined := spec
	defined.Running = false
	vm, err = s.hv.CreateVM(ctx, name, defined, meta)
	s.admission.Unlock()
	if err != nil {
		return nil, false, err
	}
	if spec.Running {
		if err := s.hv.StartVM(ctx, name); err != nil {
			// Leave nothing behind, so a retried create starts clean.
			if derr := s.hv.DeleteVM(context.WithoutCancel(ctx), name, 0); derr != nil {
				s.log.Error("removing VM that failed to start", "vm", name, "error", derr)
			}
			return nil, false, fmt.Errorf("starting VM %s: %w", name, err)
		}
		if vm, err = s.hv.GetVM(ctx, name); err != nil {
			return nil, false, err
		}
	}
	if s.sw != nil && len(spec.Interfaces) > 0 && !s.hv.ManagesSwitchPorts() {
		if err := s.sw.AttachVMPorts(ctx, name, vm.Interfaces); err != nil {
			return nil, true, fmt.Errorf("VM %s was created but its switch ports were not: %w", name, err)
		}
	}
	return vm, true, nil
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
	}
	for i := range want.Disks {
		if want.Disks[i].Pool != have.Disks[i].Pool || want.Disks[i].Volume != have.Disks[i].Volume {
			return fmt.Sprintf("disks[%d] (%s/%s, requested %s/%s)", i, have.Disks[i].Pool, have.Disks[i].Volume, want.Disks[i].Pool, want.Disks[i].Volume)
		}
	}
	for i := range want.Interfaces {
		w, h := want.Interfaces[i], have.Interfaces[i]
		if w.Network != h.Network || (w.MAC != "" && !strings.EqualFold(w.MAC, h.MAC)) {
			return fmt.Sprintf("network_interfaces[%d]", i)
		}
	}
	return ""
}

// UpdateVM converges a domain to spec: live where libvirt can, otherwise
// with one graceful restart that the response reports.
func (s *Service) UpdateVM(ctx context.Context, name string, spec api.VMSpec) (*api.VM, error) {
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
	if err := s.resolveInterfaces(ctx, &spec); err != nil {
		return nil, err
	}
	if err := s.checkDisks(ctx, name, spec); err != nil {
		return nil, err
	}
	s.admission.Lock()
	err = s.admit(ctx, name, spec.VCPU-cur.VCPU, vmMemory(spec)-vmMemory(cur.VMSpec))
	s.admission.Unlock()
	if err != nil {
		return nil, err
	}
	restarted, err := s.hv.UpdateVM(ctx, name, spec)
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
	vm.Restarted = restarted
	return vm, nil
}

// DeleteVM stops and undefines a domain; its volumes stay.
func (s *Service) DeleteVM(ctx context.Context, name string, shutdownTimeout time.Duration) error {
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
