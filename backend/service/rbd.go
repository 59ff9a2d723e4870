package service

import (
	"context"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// adoptShared lets this host learn what another host recorded about a
// volume of a shared pool (the base of an RBD clone, its source_url, its
// I/O limits: libvirt keeps none of them for rbd images, and each host
// keeps its own record). It applies only to a volume this host has no
// record of; anything else is left for the caller's conflict check.
func (s *Service) adoptShared(ctx context.Context, pool, name string, spec api.VolumeSpec, existing *api.Volume) (*api.Volume, error) {
	if !s.sharedPools[pool] || spec.Recreate {
		return existing, nil
	}
	adopted, err := s.hv.AdoptVolume(ctx, pool, name, spec)
	if err != nil || !adopted {
		return existing, err
	}
	s.log.Info("adopted the record of a shared volume another host created", "volume", pool+"/"+name, "base", spec.BaseVolume)
	return s.hv.GetVolume(ctx, pool, name)
}

// refuseRBDSnapshot refuses a snapshot of a VM with a disk on an rbd pool
// (409), before anything is written: libvirt 9.0 takes neither internal
// nor external snapshots of rbd disks, and a snapshot of only the VM's
// other disks would be a silent partial one.
func (s *Service) refuseRBDSnapshot(ctx context.Context, vm *api.VM) error {
	for _, d := range vm.Disks {
		pool := d.Pool
		if pool == "" {
			pool = DefaultPool
		}
		info, err := s.hv.PoolInfo(ctx, pool)
		if err != nil {
			continue
		}
		if info.Type == "rbd" {
			return conflict("VM %s has the disk %s/%s on rbd pool %s: snapshots of VMs with rbd disks are not supported (nothing was changed)", vm.Name, pool, d.Volume, pool)
		}
	}
	return nil
}
