package hypervisor

import (
	"context"
	"fmt"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// PoolInfo reads a pool's type and space. The pool is refreshed first:
// guests grow their qcow2 files and, on a shared pool, other hosts add
// volumes, neither of which libvirt sees by itself.
func (l *Libvirt) PoolInfo(ctx context.Context, pool string) (api.HostPool, error) {
	out := api.HostPool{Name: pool}
	err := l.do(ctx, func(c *libvirt.Connect) error {
		p, err := c.LookupStoragePoolByName(pool)
		if err != nil {
			if isCode(err, libvirt.ERR_NO_STORAGE_POOL) {
				return api.Errorf(api.CodeNotFound, "libvirt has no storage pool %s", pool)
			}
			return wrap(err, "pool %s", pool)
		}
		defer p.Free()
		if active, err := p.IsActive(); err != nil {
			return wrap(err, "pool %s state", pool)
		} else if !active {
			return api.Errorf(api.CodeConflict, "storage pool %s is defined in libvirt but not running (virsh pool-start %s; virsh pool-autostart %s)", pool, pool, pool)
		}
		_ = p.Refresh(0)
		doc, err := p.GetXMLDesc(0)
		if err != nil {
			return wrap(err, "pool %s", pool)
		}
		var x libvirtxml.StoragePool
		if err := x.Unmarshal(doc); err != nil {
			return err
		}
		out.Type = x.Type
		info, err := p.GetInfo()
		if err != nil {
			return wrap(err, "pool %s info", pool)
		}
		out.CapacityMiB = int64(info.Capacity >> 20)
		out.FreeMiB = int64(info.Available >> 20)
		return nil
	})
	return out, err
}

// SetSharedPools names the pools every host sees alike (see
// sharedDisk).
func (l *Libvirt) SetSharedPools(shared map[string]bool) {
	l.sharedMu.Lock()
	defer l.sharedMu.Unlock()
	l.shared = shared
}

// sharedVolume reports whether the volume v lives in a shared pool: a
// migration leaves it where it is, and the target opens the same volume.
func (l *Libvirt) sharedVolume(v *libvirt.StorageVol) (pool string, shared bool) {
	p, err := v.LookupPoolByVolume()
	if err != nil {
		return "", false
	}
	defer p.Free()
	name, err := p.GetName()
	if err != nil {
		return "", false
	}
	l.sharedMu.Lock()
	defer l.sharedMu.Unlock()
	return name, l.shared[name]
}

// sharedOnTarget checks that the libvirt at uri serves each shared disk's
// pool and sees its volume at the same path: QEMU on the target opens
// that path, and a pool that is shared by name only (another mount, not
// mounted) would start the guest on a missing or different disk.
func sharedOnTarget(uri string, disks []sharedDisk) error {
	if len(disks) == 0 {
		return nil
	}
	c, err := libvirt.NewConnect(uri)
	if err != nil {
		return err
	}
	defer c.Close()
	for _, d := range disks {
		p, err := c.LookupStoragePoolByName(d.pool)
		if err != nil {
			return fmt.Errorf("disk %s is on shared pool %s, which the target's libvirt does not have", d.target, d.pool)
		}
		// Volumes another host created are not known until a refresh.
		_ = p.Refresh(0)
		p.Free()
		v, err := c.LookupStorageVolByPath(d.path)
		if err != nil {
			return fmt.Errorf("disk %s is on shared pool %s, but the target does not see %s there (is the pool mounted at the same path?)", d.target, d.pool, d.path)
		}
		v.Free()
		if d.key == "" {
			continue
		}
		// QEMU on the target opens the LUKS image with the secret the
		// domain XML names: the target's kvm-hostd registers it when it
		// reserves room for the VM (it must hold the key). Its value is
		// never read here, only that it exists.
		s, err := c.LookupSecretByUUIDString(diskSecretUUID(d.key, d.pool, d.volume))
		if err != nil {
			return fmt.Errorf("disk %s (%s/%s) is encrypted with key %q, and the target has not registered its secret: "+
				"the target's kvm-hostd must hold %s.key and be told about the disk before the move (PUT /v1/reservations/{vm} with its disks)",
				d.target, d.pool, d.volume, d.key, d.key)
		}
		s.Free()
		if d.secret != "" {
			// The domain XML names the secret by UUID: the target
			// needs one of the same UUID, as the operator defines it
			// on every host.
			sec, err := c.LookupSecretByUUIDString(d.secret)
			if err != nil {
				return fmt.Errorf("disk %s is on rbd pool %s, whose ceph secret %s the target's libvirt does not have (define it with the same UUID on every host)", d.target, d.pool, d.secret)
			}
			sec.Free()
		}
	}
	return nil
}

// completedJobOn reads the statistics of the migration that just brought
// domain name to the libvirt at uri (libvirt keeps them on the
// destination as the domain's completed job).
func completedJobOn(uri, name string) (*libvirt.DomainJobInfo, bool) {
	c, err := libvirt.NewConnect(uri)
	if err != nil {
		return nil, false
	}
	defer c.Close()
	d, err := c.LookupDomainByName(name)
	if err != nil {
		return nil, false
	}
	defer d.Free()
	st, err := d.GetJobStats(libvirt.DOMAIN_JOB_STATS_COMPLETED)
	if err != nil {
		return nil, false
	}
	return st, true
}

func (l *Libvirt) isShared(pool string) bool {
	l.sharedMu.Lock()
	defer l.sharedMu.Unlock()
	return l.shared[pool]
}
