// Package service is what a kvm-hostd request means: validation, locks,
// admission control and idempotency, on top of the Hypervisor and Switch
// drivers. It knows nothing about HTTP.
package service

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// DefaultPool is the storage pool kvm-hostd ensures at --pool-dir.
const DefaultPool = api.DefaultPool

// Config is the host's identity and policy.
type Config struct {
	Name             string
	Version          string
	Labels           map[string]string
	TunnelIP         string
	CPUOvercommit    float64
	MemoryOvercommit float64
	PoolDir          string
	LibvirtURI       string
	// MigrationURI is how other hosts' libvirt reaches this one (reported
	// in the inventory; empty: this host cannot receive VMs).
	MigrationURI string
	// FetchAllow lists networks that downloads and copies may reach in
	// addition to the default (see FetchPolicy).
	FetchAllow []netip.Prefix
	// PCIDevices are the host PCI devices the operator named for
	// passthrough (see pci.go).
	PCIDevices []PCIDevice
	// Keys names the disk-encryption master keys the host holds
	// (kvm-hostd --key-dir); the hypervisor has the keys themselves.
	Keys []string
	// Pools are the operator's libvirt storage pools served besides
	// "default" (--pool); SharedPools are the served directory pools
	// every host sees under the same name and path (--shared-pool).
	Pools       []string
	SharedPools []string
	// Maintenance starts the host in maintenance (kvm-hostd --maintenance);
	// StateDir, when set, is where the maintenance state is kept across
	// restarts (see maintenance.go).
	Maintenance bool
	StateDir    string
}

// Service implements the kvm-hostd API on one host.
type Service struct {
	cfg Config
	hv  Hypervisor
	sw  Switch
	log *slog.Logger
	// vmLists coalesces concurrent lists of every VM (listflight.go).
	vmLists vmListFlight

	locks  keyedMutex
	claims volumeClaims // see claims.go
	// admission guards ledger: an admission check, the libvirt read it
	// is based on and the reservation it records are one step.
	admission sync.Mutex
	ledger    admissionLedger
	// leases is the DHCP fallback of VM addresses (nil: the Service's
	// own, if it answers LeasesFor).
	leases LeaseSource
	ops    *operations
	// idem remembers POST results by Idempotency-Key so a retried POST
	// (e.g. a migration whose response was lost) is not acted on twice.
	idem *idempotencyCache
	// fetcher is the one way out to the network: image downloads and
	// host-to-host copies.
	fetcher *Fetcher
	fills   volumeFills
	// hostNet is how uplinks are checked against the host's interfaces.
	hostNet hostNet
	// dhcp holds the DHCP servers of this host's networks (see dhcp.go).
	dhcp dhcpServers
	// sharedPools are the served pools every host sees alike (see
	// pools.go), by name.
	sharedPools map[string]bool
	// maint is the maintenance switch (see maintenance.go).
	maint maintenance
	// poolTypes are the libvirt types of the served pools (dir, rbd...).
	poolTypes map[string]string
}

// New builds a Service and ensures the default pool exists.
func New(ctx context.Context, cfg Config, hv Hypervisor, sw Switch, log *slog.Logger) (*Service, error) {
	if cfg.CPUOvercommit <= 0 {
		cfg.CPUOvercommit = 4
	}
	if cfg.MemoryOvercommit <= 0 {
		cfg.MemoryOvercommit = 1
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Service{cfg: cfg, hv: hv, sw: sw, log: log, ops: newOperations(), idem: newIdempotencyCache(time.Hour), fetcher: NewFetcher(), hostNet: realHostNet}
	s.fetcher.CheckAddr = (&FetchPolicy{Allow: cfg.FetchAllow}).Check
	if err := s.loadMaintenance(); err != nil {
		return nil, err
	}
	if err := hv.EnsurePool(ctx, DefaultPool, cfg.PoolDir); err != nil {
		return nil, fmt.Errorf("ensuring storage pool %q at %s: %w", DefaultPool, cfg.PoolDir, err)
	}
	shared, types, err := checkPoolsAtStart(ctx, hv, cfg)
	if err != nil {
		return nil, err
	}
	s.sharedPools, s.poolTypes = shared, types
	// Migration leaves a disk on a shared pool in place (and never deletes
	// it after the VM left): tell the driver which pools those are.
	hv.SetSharedPools(shared)
	if err := hv.RecoverMigrations(ctx); err != nil {
		return nil, fmt.Errorf("settling migrations left by a previous run: %w", err)
	}
	for _, pool := range s.servedPools() {
		if shared[pool] {
			// Another host may be filling a volume there right now.
			continue
		}
		if err := s.sweepPartials(ctx, pool); err != nil {
			return nil, fmt.Errorf("deleting unfinished volumes in pool %q: %w", pool, err)
		}
	}
	return s, nil
}

// OnOperationDone registers fn to be told how every operation (download,
// copy, migration) ended; kvm-hostd's audit log records it. Call it before
// serving requests.
func (s *Service) OnOperationDone(fn func(api.Operation)) {
	s.ops.mu.Lock()
	defer s.ops.mu.Unlock()
	s.ops.onDone = fn
}

// Name is the host's name.
func (s *Service) Name() string { return s.cfg.Name }

// Version is kvm-hostd's version.
func (s *Service) Version() string { return s.cfg.Version }

// Host returns the inventory. A broken libvirt or OVSDB connection makes the
// host unhealthy rather than failing the call, so the provider can show it.
func (s *Service) Host(ctx context.Context) *api.Host {
	h := &api.Host{
		Name:             s.cfg.Name,
		CPUOvercommit:    s.cfg.CPUOvercommit,
		MemoryOvercommit: s.cfg.MemoryOvercommit,
		Labels:           maps.Clone(s.cfg.Labels),
		TunnelIP:         s.cfg.TunnelIP,
		Version:          s.cfg.Version,
		LibvirtURI:       s.cfg.LibvirtURI,
		MigrationURI:     s.cfg.MigrationURI,
		Keys:             slices.Clone(s.cfg.Keys),
		Healthy:          true,
	}
	m := s.Maintenance()
	h.Maintenance, h.MaintenanceReason = m.Enabled, m.Reason
	if h.Labels == nil {
		h.Labels = map[string]string{}
	}
	if err := s.hv.Ping(ctx); err != nil {
		h.Healthy, h.Message = false, "libvirt: "+err.Error()
		return h
	}
	res, err := s.resources(ctx)
	if err != nil {
		h.Healthy, h.Message = false, "libvirt: "+err.Error()
		return h
	}
	h.CPUs, h.MemoryMiB, h.FreeMemoryMiB = res.CPUs, res.MemoryMiB, res.FreeMemoryMiB
	h.AllocatedVCPU, h.AllocatedMemoryMiB, h.VMCount = res.AllocatedVCPU, res.AllocatedMemoryMiB, res.VMCount
	h.DomainType, h.CPUMode, h.CPUDisabled, h.Probe = res.DomainType, res.CPUMode, res.CPUDisabled, res.Probe
	h.HypervisorType = res.DomainType
	h.Hugepages = res.Hugepages
	s.hostPCIDevices(ctx, h)
	s.hostKeyLabels(h)
	if h.Pools, err = s.hostPools(ctx); err != nil {
		h.Healthy, h.Message = false, "libvirt: "+err.Error()
		return h
	}
	if s.sw != nil {
		if err := s.sw.Ping(ctx); err != nil {
			h.Healthy, h.Message = false, "ovsdb: "+err.Error()
		}
	}
	return h
}

// Healthy reports whether libvirt answers.
func (s *Service) Healthy(ctx context.Context) error { return s.hv.Ping(ctx) }

// keyedMutex hands out one mutex per key ("pool/default", "vm/web-1"), so
// work on different objects runs in parallel and work on one object is
// serialised inside the host: users never need -parallelism=1.
type keyedMutex struct {
	mu sync.Mutex
	m  map[string]*keyedEntry
}

type keyedEntry struct {
	mu   sync.Mutex
	refs int
}

// Lock locks key and returns the unlock function.
func (k *keyedMutex) Lock(key string) func() {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyedEntry{}
	}
	e := k.m[key]
	if e == nil {
		e = &keyedEntry{}
		k.m[key] = e
	}
	e.refs++
	k.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		k.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}

func invalid(format string, args ...any) error { return api.Errorf(api.CodeInvalid, format, args...) }
func conflict(format string, args ...any) error {
	return api.Errorf(api.CodeConflict, format, args...)
}
