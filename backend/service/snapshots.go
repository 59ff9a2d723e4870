package service

import (
	"context"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

func validateSnapshotNames(vm, name string) error {
	if err := validateVMName(vm); err != nil {
		return err
	}
	if err := api.ValidateName("snapshot", name); err != nil {
		return invalid("%s", err)
	}
	return nil
}

// ListSnapshots lists a domain's snapshots.
func (s *Service) ListSnapshots(ctx context.Context, vm string) ([]api.Snapshot, error) {
	if err := validateVMName(vm); err != nil {
		return nil, err
	}
	return s.hv.ListSnapshots(ctx, vm)
}

// GetSnapshot reads a snapshot.
func (s *Service) GetSnapshot(ctx context.Context, vm, name string) (*api.Snapshot, error) {
	if err := validateSnapshotNames(vm, name); err != nil {
		return nil, err
	}
	return s.hv.GetSnapshot(ctx, vm, name)
}

// PutSnapshot creates a snapshot; an existing one with the same spec is
// returned, a different one is a conflict.
func (s *Service) PutSnapshot(ctx context.Context, vm, name string, spec api.SnapshotSpec) (*api.Snapshot, bool, error) {
	if err := validateSnapshotNames(vm, name); err != nil {
		return nil, false, err
	}
	if err := api.CheckDescription(spec.Description); err != nil {
		return nil, false, invalid("%s", err)
	}
	unlock := s.locks.Lock("vm/" + vm)
	defer unlock()
	existing, err := s.hv.GetSnapshot(ctx, vm, name)
	switch {
	case err == nil:
		if existing.Description != spec.Description || existing.IncludeMemory != spec.IncludeMemory {
			return nil, false, conflict("snapshot %s of VM %s already exists with a different description or include_memory", name, vm)
		}
		return existing, false, nil
	case !api.IsNotFound(err):
		return nil, false, err
	}
	cur, err := s.hv.GetVM(ctx, vm)
	if err != nil {
		return nil, false, err
	}
	if err := s.refuseEncryptedSnapshot(ctx, cur); err != nil {
		return nil, false, err
	}
	if err := s.refuseRBDSnapshot(ctx, cur); err != nil {
		return nil, false, err
	}
	snap, err := s.hv.CreateSnapshot(ctx, vm, name, spec)
	return snap, err == nil, err
}

// RevertSnapshot reverts a domain to a snapshot in place.
func (s *Service) RevertSnapshot(ctx context.Context, vm, name string) (*api.Snapshot, error) {
	if err := validateSnapshotNames(vm, name); err != nil {
		return nil, err
	}
	unlock := s.locks.Lock("vm/" + vm)
	defer unlock()
	if err := s.hv.RevertSnapshot(ctx, vm, name); err != nil {
		return nil, err
	}
	return s.hv.GetSnapshot(ctx, vm, name)
}

// DeleteSnapshot deletes a snapshot.
func (s *Service) DeleteSnapshot(ctx context.Context, vm, name string) error {
	if err := validateSnapshotNames(vm, name); err != nil {
		return err
	}
	unlock := s.locks.Lock("vm/" + vm)
	defer unlock()
	return s.hv.DeleteSnapshot(ctx, vm, name)
}
