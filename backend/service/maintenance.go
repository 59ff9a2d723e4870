package service

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"unicode"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// maintenanceFile is where, under Config.StateDir, the maintenance state
// outlives a restart: an operator who drains a host and restarts kvm-hostd
// (an upgrade, a reboot of the host) expects it to stay drained until they
// say otherwise.
const maintenanceFile = "maintenance.json"

// maintenance is the host's maintenance switch (see api.Maintenance).
type maintenance struct {
	mu     sync.Mutex
	state  api.Maintenance
	forced bool // --maintenance: on whatever the state file says
}

// loadMaintenance sets the starting state: on when --maintenance is given,
// else whatever the state directory recorded last.
func (s *Service) loadMaintenance() error {
	s.maint.forced = s.cfg.Maintenance
	if s.cfg.StateDir != "" {
		b, err := os.ReadFile(filepath.Join(s.cfg.StateDir, maintenanceFile))
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return fmt.Errorf("reading maintenance state: %w", err)
		default:
			if err := json.Unmarshal(b, &s.maint.state); err != nil {
				return fmt.Errorf("reading maintenance state %s: %w", filepath.Join(s.cfg.StateDir, maintenanceFile), err)
			}
		}
	}
	if s.cfg.Maintenance && !s.maint.state.Enabled {
		s.maint.state = api.Maintenance{Enabled: true, Reason: "kvm-hostd --maintenance"}
	}
	if s.maint.state.Enabled {
		s.log.Warn("host is in maintenance: it admits no new VMs", "reason", s.maint.state.Reason)
	}
	return nil
}

// Maintenance reports the host's maintenance state.
func (s *Service) Maintenance() api.Maintenance {
	s.maint.mu.Lock()
	defer s.maint.mu.Unlock()
	return s.maint.state
}

// SetMaintenance switches maintenance on or off and records it in the state
// directory, so it survives a restart. It takes admission's lock: once it
// returns, no create or arriving migration admitted before the switch is
// still being decided.
func (s *Service) SetMaintenance(m api.Maintenance) (api.Maintenance, error) {
	m.Reason = strings.TrimSpace(m.Reason)
	if len(m.Reason) > api.MaxMaintenanceReasonLen {
		return api.Maintenance{}, api.Errorf(api.CodeInvalid, "reason is %d bytes long; at most %d are allowed", len(m.Reason), api.MaxMaintenanceReasonLen)
	}
	if strings.ContainsFunc(m.Reason, unicode.IsControl) {
		return api.Maintenance{}, api.Errorf(api.CodeInvalid, "reason must be one line without control characters")
	}
	if !m.Enabled {
		m.Reason = ""
	}
	s.admission.Lock()
	defer s.admission.Unlock()
	s.maint.mu.Lock()
	defer s.maint.mu.Unlock()
	if s.cfg.StateDir != "" {
		if err := writeFileAtomic(filepath.Join(s.cfg.StateDir, maintenanceFile), m); err != nil {
			return api.Maintenance{}, api.Errorf(api.CodeInternal, "recording maintenance state: %v", err)
		}
	}
	if s.maint.forced && !m.Enabled {
		// The flag only sets the starting state; the API is how it ends.
		s.log.Info("maintenance ended through the API although kvm-hostd was started with --maintenance")
	}
	s.maint.state = m
	s.log.Info("maintenance changed", "enabled", m.Enabled, "reason", m.Reason)
	return m, nil
}

// refuseInMaintenance is admission's maintenance rule: no new VM, arriving
// migrations included. Callers hold s.admission.
func (s *Service) refuseInMaintenance(vm string) error {
	s.maint.mu.Lock()
	defer s.maint.mu.Unlock()
	if !s.maint.state.Enabled {
		return nil
	}
	why := ""
	if s.maint.state.Reason != "" {
		why = " (" + s.maint.state.Reason + ")"
	}
	return api.Errorf(api.CodeMaintenance, "host %s is in maintenance%s and admits no new VMs: VM %s must go to another host", s.cfg.Name, why, vm)
}

func writeFileAtomic(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return nil
}
