package service

import (
	"context"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// PowerVM starts, stops or reboots a VM without touching its definition
// (POST /v1/vms/{name}/power, the kvm_vm_power action). Nothing is
// admitted: a stopped VM already holds its allocation. The response's
// Restarted says whether a running VM was stopped and started again.
func (s *Service) PowerVM(ctx context.Context, name string, req api.PowerRequest) (*api.VM, error) {
	if err := validateVMName(name); err != nil {
		return nil, err
	}
	if err := api.CheckPowerState(req.State); err != nil {
		return nil, err
	}
	unlock := s.locks.Lock("vm/" + name)
	defer unlock()
	restarted, err := s.hv.PowerVM(ctx, name, req.State)
	if err != nil {
		return nil, err
	}
	vm, err := s.hv.GetVM(ctx, name)
	if err != nil {
		return nil, err
	}
	s.namePCIDevices(vm)
	vm.Restarted = restarted
	return vm, nil
}
