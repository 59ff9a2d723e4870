package service

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// servedPools are "default" and the operator's --pool names, in order.
func (s *Service) servedPools() []string {
	return append([]string{DefaultPool}, s.cfg.Pools...)
}

// checkPoolsAtStart refuses to start with a --pool that libvirt does not
// have, or has but not running: kvm-hostd serves pools the operator
// defined and never defines (or starts) them itself. It returns the served
// pools that are shared, and the libvirt type of every served pool.
func checkPoolsAtStart(ctx context.Context, hv Hypervisor, cfg Config) (map[string]bool, map[string]string, error) {
	shared := map[string]bool{}
	types := map[string]string{}
	for _, name := range append([]string{DefaultPool}, cfg.Pools...) {
		p, err := hv.PoolInfo(ctx, name)
		if err != nil {
			if api.IsNotFound(err) {
				return nil, nil, fmt.Errorf("--pool %s: libvirt has no storage pool %q; define and start it first "+
					"(e.g. virsh pool-define-as %s dir --target /srv/%s && virsh pool-start %s && virsh pool-autostart %s): "+
					"kvm-hostd serves the pools an operator defined but never defines them", name, name, name, name, name, name)
			}
			return nil, nil, fmt.Errorf("--pool %s: %w", name, err)
		}
		types[name] = p.Type
		if slices.Contains(api.SharedPoolTypes, p.Type) || slices.Contains(cfg.SharedPools, name) {
			shared[name] = true
		}
	}
	return shared, types, nil
}

// LocalPools are the served pools that are not shared: every volume in
// them belongs to this host.
func (s *Service) LocalPools() []string {
	var out []string
	for _, p := range s.servedPools() {
		if !s.sharedPools[p] {
			out = append(out, p)
		}
	}
	return out
}

// poolServed refuses a pool this host does not serve, naming those it does.
func (s *Service) poolServed(pool string) error {
	if slices.Contains(s.servedPools(), pool) {
		return nil
	}
	return api.Errorf(api.CodeNotFound, "%s", s.notServed(pool))
}

func (s *Service) notServed(pool string) string {
	return fmt.Sprintf("pool %s is not served by host %s (it serves: %s; kvm-hostd --pool NAME serves a libvirt pool)",
		pool, s.cfg.Name, strings.Join(s.servedPools(), ", "))
}

// hostPools reads every served pool from libvirt for the inventory.
func (s *Service) hostPools(ctx context.Context) ([]api.HostPool, error) {
	var out []api.HostPool
	for _, name := range s.servedPools() {
		p, err := s.hv.PoolInfo(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("pool %s: %w", name, err)
		}
		p.Shared = s.sharedPools[name]
		out = append(out, p)
	}
	return out, nil
}

// checkPoolSpace refuses (409, with the numbers) a volume of sizeMiB that
// does not fit in the pool's free space. Space is counted at the volume's
// full size although qcow2 and sparse raw files start small: a guest may
// fill its disk, and a full pool stops every VM writing to it.
func (s *Service) checkPoolSpace(ctx context.Context, pool, name string, sizeMiB int64, what string) error {
	if sizeMiB <= 0 {
		return nil
	}
	p, err := s.hv.PoolInfo(ctx, pool)
	if err != nil {
		return err
	}
	if sizeMiB > p.FreeMiB {
		return api.Errorf(api.CodeFull, "volume %s/%s does not fit on host %s: %s %d MiB, pool %s has %d MiB free of %d MiB",
			pool, name, s.cfg.Name, what, sizeMiB, pool, p.FreeMiB, p.CapacityMiB)
	}
	return nil
}
