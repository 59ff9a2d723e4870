package hypervisor

import (
	"context"
	"time"

	"libvirt.org/go/libvirt"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// MigrateVM moves a domain to req.TargetURI, peer to peer. Live mode
// copies the (non-shared) disks incrementally: the destination's kvm-hostd
// has created empty overlays on its own copy of each base. Offline mode
// moves only the definition; the caller copies the disks.
func (l *Libvirt) MigrateVM(ctx context.Context, name string, req api.MigrateRequest, progress func(float64)) error {
	if l.test {
		return api.Errorf(api.CodeUnsupported, "the libvirt test driver cannot migrate")
	}
	if req.TargetURI == "" {
		return api.Errorf(api.CodeInvalid, "target_uri is required")
	}
	if progress == nil {
		progress = func(float64) {}
	}
	return l.withDomain(ctx, name, func(c *libvirt.Connect, d *libvirt.Domain) error {
		x, err := domXML(d, libvirt.DOMAIN_XML_INACTIVE)
		if err != nil {
			return wrap(err, "read domain %s", name)
		}
		active, err := d.IsActive()
		if err != nil {
			return wrap(err, "state of %s", name)
		}
		params := &libvirt.DomainMigrateParameters{}
		var flags libvirt.DomainMigrateFlags = libvirt.MIGRATE_PEER2PEER | libvirt.MIGRATE_PERSIST_DEST | libvirt.MIGRATE_UNDEFINE_SOURCE
		if req.Mode == "offline" || !active {
			flags |= libvirt.MIGRATE_OFFLINE
		} else {
			flags |= libvirt.MIGRATE_LIVE | libvirt.MIGRATE_NON_SHARED_INC
			for _, disk := range diskList(x) {
				if disk.Target != nil {
					params.MigrateDisks = append(params.MigrateDisks, disk.Target.Dev)
				}
			}
			params.MigrateDisksSet = len(params.MigrateDisks) > 0
		}
		progress(0)
		done := make(chan struct{})
		defer close(done)
		go func() {
			// Poll the job: libvirt reports remaining memory and disk.
			t := time.NewTicker(500 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-done:
					return
				case <-ctx.Done():
					_ = d.AbortJob()
					return
				case <-t.C:
					if ji, err := d.GetJobInfo(); err == nil {
						total := ji.DataTotal
						if total > 0 && ji.DataTotalSet {
							progress(float64(ji.DataProcessed) / float64(total) * 0.99)
						}
					}
				}
			}
		}()
		if err := d.MigrateToURI3(req.TargetURI, params, flags); err != nil {
			return wrap(err, "migrate %s to %s", name, req.TargetURI)
		}
		l.removeSeed(metaOf(x).SeedISO)
		progress(1)
		return nil
	})
}
