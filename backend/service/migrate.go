package service

import (
	"context"
	"fmt"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// MigrateVM starts moving a domain to another host as an operation. The
// same Idempotency-Key returns the same operation, so a retried POST never
// starts a second migration.
func (s *Service) MigrateVM(ctx context.Context, name string, req api.MigrateRequest, idemKey string) (*api.Operation, error) {
	if err := validateVMName(name); err != nil {
		return nil, err
	}
	// The URI is opened by libvirtd and by kvm-hostd itself (the seed ISO
	// copy): refuse anything that could start a program or read local
	// files before it reaches either.
	if err := api.ValidateMigrationURI(req.TargetURI); err != nil {
		return nil, invalid("target_uri: %v", err)
	}
	if err := api.ValidateMigrateRequest(&req); err != nil {
		return nil, err
	}
	if s.cfg.MigrationURI != "" && req.TargetURI == s.cfg.MigrationURI {
		return nil, invalid("target_uri %s is this host (%s)", req.TargetURI, s.cfg.Name)
	}
	vm, err := s.hv.GetVM(ctx, name)
	if err != nil {
		return nil, err
	}
	if err := refusePCIMigration(s.cfg.Name, vm); err != nil {
		return nil, err
	}
	v, err := s.idem.Do(idemKey, idemFingerprint("migrate", name, req), func() (any, error) {
		return s.ops.start("migrate", "vm/"+name, func(ctx context.Context, progress func(float64)) error {
			unlock := s.locks.Lock("vm/" + name)
			defer unlock()
			defer s.dhcpChanged() // stop serving it here once it has moved
			if err := s.hv.MigrateVM(ctx, name, req, crashingProgress(progress, CrashMigrateStarted)); err != nil {
				return fmt.Errorf("migrating VM %s from %s to %s: %w", name, s.cfg.Name, req.TargetHost, err)
			}
			return nil
		}), nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*api.Operation), nil
}
