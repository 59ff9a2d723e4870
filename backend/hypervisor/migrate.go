package hypervisor

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// sharedDisk is a disk on a shared pool: the target opens the same volume,
// so the migration neither copies nor deletes it.
type sharedDisk struct {
	target string // vda
	path   string
	pool   string
	volume string
	key    string // encryption key name; "" for a plain disk
	secret string // UUID of the ceph secret an rbd disk authenticates with
}

// migratedDisk is one disk whose storage a migration copies.
type migratedDisk struct {
	target  string // vda
	path    string
	overlay bool // has a backing store (a linked clone)
}

// MigrateVM moves a domain to req.TargetURI, peer to peer, copying its
// (non-shared) disks: incrementally (VIR_MIGRATE_NON_SHARED_INC) when every
// disk is an overlay — the target's kvm-hostd has created an empty overlay
// on its own copy of each base, at the same path — else in full
// (VIR_MIGRATE_NON_SHARED_DISK) into the volumes pre-created on the target.
//
// A running domain migrates live (under TCG paused while its memory is
// copied: see liveMemoryCopy). A stopped domain (or mode "offline", which
// first shuts a running one down gracefully) is started paused, migrated the
// same way so its disks are copied, and destroyed on the target: it arrives
// stopped and defined. On failure libvirt leaves the domain on the source
// in the state it had: a domain shut down for an offline migration is
// started again.
//
// Everything that can refuse is checked before anything changes (before
// an offline migration shuts the VM down): snapshots (libvirt refuses to
// migrate a domain that has any), disks that are not files, and whether
// the target libvirt answers. The migration runs once: an error is never
// taken for a lost local connection and retried (doOnce).
//
// After success the source copies of the migrated volumes are deleted
// (libvirt never deletes them); their bases stay.
//
// Disks on a shared pool (SetSharedPools) are not copied: the target must
// see the same volume at the same path (checked before anything changes),
// libvirt is told to migrate only the other disks
// (VIR_MIGRATE_PARAM_MIGRATE_DISKS), and a VM whose disks are all shared
// migrates with no storage copy at all. Shared volumes are never deleted.
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
	var migrated []migratedDisk
	var shared []sharedDisk
	var diskBytes atomic.Uint64 // the most the job reported for disks
	var seed string
	var def *libvirtxml.Domain
	var nvram string
	var nvramSent []byte
	err := l.doOnce(ctx, func(c *libvirt.Connect) error {
		d, err := c.LookupDomainByName(name)
		if err != nil {
			return wrap(err, "domain %s", name)
		}
		defer d.Free()
		l.log.Info("migration started", "name", name, "target", req.TargetURI, "mode", req.Mode)
		x, err := domXML(d, libvirt.DOMAIN_XML_INACTIVE)
		if err != nil {
			return wrap(err, "read domain %s", name)
		}
		def = x
		active, err := d.IsActive()
		if err != nil {
			return wrap(err, "state of %s", name)
		}
		if n, err := d.SnapshotNum(0); err != nil {
			return wrap(err, "snapshots of %s", name)
		} else if n > 0 {
			return api.Errorf(api.CodeConflict, "VM %s has %d snapshot(s): libvirt cannot migrate a VM with snapshots; delete them first (nothing was changed)", name, n)
		}
		meta := metaOf(x)
		allOverlays := true
		for _, disk := range diskList(x) {
			if disk.Target == nil {
				continue
			}
			p := diskPath(&disk)
			if p == "" {
				return api.Errorf(api.CodeUnsupported, "disk %s of VM %s is not a file; only pool volumes can migrate", disk.Target.Dev, name)
			}
			md := migratedDisk{target: disk.Target.Dev, path: p}
			if v, err := c.LookupStorageVolByPath(p); err == nil {
				pool, isShared := l.sharedVolume(v)
				if isShared {
					vol, _ := v.GetName()
					v.Free()
					sd := sharedDisk{target: disk.Target.Dev, path: p, pool: pool, volume: vol,
						key: l.readMeta(p).EncryptionKey}
					if n := disk.Source.Network; n != nil && n.Auth != nil && n.Auth.Secret != nil {
						sd.secret = n.Auth.Secret.UUID
					}
					shared = append(shared, sd)
					continue
				}
				if vx, err := volXML(v); err == nil && vx.BackingStore != nil && vx.BackingStore.Path != "" {
					md.overlay = true
				}
				v.Free()
			}
			allOverlays = allOverlays && md.overlay
			migrated = append(migrated, md)
		}
		if err := pingLibvirt(req.TargetURI); err != nil {
			return fmt.Errorf("the target libvirt %s does not answer (nothing was changed): %w", req.TargetURI, err)
		}
		if err := sharedOnTarget(req.TargetURI, shared); err != nil {
			return api.Errorf(api.CodeConflict, "VM %s cannot migrate to %s without copying its disks (nothing was changed): %v", name, req.TargetHost, err)
		}
		seed = meta.SeedISO
		if seed != "" {
			// The seed is a read-only CD-ROM, which libvirt does not copy:
			// QEMU on the target opens the same path, so put it there.
			if err := copySeedTo(req.TargetURI, seed); err != nil {
				return fmt.Errorf("copying the cloud-init seed of %s to %s: %w", name, req.TargetURI, err)
			}
		}

		// The NVRAM file, where libvirt does not take it (see
		// copyNVRAMTo); from the live definition when running, which
		// names the file QEMU uses.
		nvram = nvramPath(x)
		if active {
			if lx, err := domXML(d, 0); err == nil && nvramPath(lx) != "" {
				nvram = nvramPath(lx)
			}
		}
		if nvram != "" {
			if nvramSent, err = copyNVRAMTo(req.TargetURI, nvram); err != nil {
				return fmt.Errorf("copying the NVRAM of %s to %s (nothing was changed): %w", name, req.TargetURI, err)
			}
		}

		// From here on a failure must leave the VM as it was.
		shutDown := false
		restore := func(err error) error {
			if !shutDown {
				return err
			}
			if a, aerr := d.IsActive(); aerr == nil && a {
				_ = d.Destroy() // the paused copy source
			}
			if serr := d.Create(); serr != nil {
				return fmt.Errorf("%w (and starting %s again on this host failed: %v)", err, name, serr)
			}
			l.log.Warn("offline migration failed; the VM was started again on this host", "name", name, "target", req.TargetURI, "err", err)
			return err
		}
		if active && req.Mode == "offline" {
			timeout := shutdownTimeoutSec(meta.ShutdownTimeout)
			if err := l.stopDomain(ctx, d, timeout); err != nil {
				return restore(wrap(err, "stop %s for offline migration", name))
			}
			active, shutDown = false, true
		}
		startedPaused := false
		if !active {
			// libvirt copies storage only while a QEMU process runs: run
			// one that never executes a guest instruction.
			if err := d.CreateWithFlags(libvirt.DOMAIN_START_PAUSED); err != nil {
				return restore(wrap(err, "start %s paused to copy its disks", name))
			}
			startedPaused = true
		}

		// No bandwidth cap: the downtime of a paused memory copy (TCG) and
		// the convergence of a live one (KVM) both depend on it.
		params := &libvirt.DomainMigrateParameters{BandwidthSet: true, Bandwidth: migrateBandwidthMiBs}
		flags := libvirt.MIGRATE_PEER2PEER | libvirt.MIGRATE_PERSIST_DEST | libvirt.MIGRATE_UNDEFINE_SOURCE
		if liveMemoryCopy(def) {
			flags |= libvirt.MIGRATE_LIVE
		}
		if startedPaused {
			flags |= libvirt.MIGRATE_PAUSED
		}
		if len(shared) > 0 {
			// libvirt refuses to leave a disk behind on what it takes for
			// a local file system (a dir pool the operator marked shared
			// need not be on a cluster file system libvirt recognises):
			// the operator has said every host sees it.
			flags |= libvirt.MIGRATE_UNSAFE
		}
		if len(migrated) > 0 {
			if allOverlays {
				flags |= libvirt.MIGRATE_NON_SHARED_INC
			} else {
				flags |= libvirt.MIGRATE_NON_SHARED_DISK
			}
			params.MigrateDisksSet = true
			for _, m := range migrated {
				params.MigrateDisks = append(params.MigrateDisks, m.target)
			}
		}
		// Mark what the migration moves away, so that a kvm-hostd killed
		// before it finished the cleanup below finishes it at its next
		// start (RecoverMigrations).
		uuid, _ := d.GetUUIDString()
		l.markMigrating(migrated, seed, uuid)
		progress(0)
		done := make(chan struct{})
		go func() {
			// Poll the job: libvirt reports remaining memory and disk
			// (often enough to see a short disk copy's total).
			t := time.NewTicker(250 * time.Millisecond)
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
						if ji.DiskTotalSet && ji.DiskTotal > diskBytes.Load() {
							diskBytes.Store(ji.DiskTotal)
						}
						total := ji.DataTotal
						if total > 0 && ji.DataTotalSet {
							progress(float64(ji.DataProcessed) / float64(total) * 0.95)
						}
					}
				}
			}
		}()
		t0 := time.Now()
		err = d.MigrateToURI3(req.TargetURI, params, flags)
		close(done)
		if err != nil {
			if startedPaused {
				if a, aerr := d.IsActive(); aerr == nil && a {
					_ = d.Destroy()
				}
			}
			l.markMigrating(migrated, seed, "")
			if nvramSent != nil {
				if derr := deleteNVRAMOn(req.TargetURI, nvram); derr != nil {
					l.log.Warn("migration failed: could not delete the NVRAM copied to the target", "vm", name, "err", derr)
				}
			}
			return restore(wrap(err, "migrate %s to %s", name, req.TargetURI))
		}
		if nvram != "" && nvramSent != nil {
			// The source QEMU is gone: its file is final now.
			if err := recopyNVRAM(req.TargetURI, nvram, nvramSent); err != nil {
				l.log.Warn("migrated: could not copy the NVRAM written during the migration", "vm", name, "err", err)
			}
		}
		took := time.Since(t0)
		// The destination keeps the completed job's statistics; its disk
		// figures may be empty (the copy ran from this side), so the
		// largest total seen while polling counts too.
		if st, ok := completedJobOn(req.TargetURI, name); ok && st.DiskTotalSet && st.DiskTotal > diskBytes.Load() {
			diskBytes.Store(st.DiskTotal)
		}
		l.log.Info("domain migrated", "name", name, "target", req.TargetURI, "disks", len(migrated),
			"shared_disks", len(shared), "disk_total_bytes", diskBytes.Load(),
			"incremental", allOverlays && len(migrated) > 0, "stopped", startedPaused, "took", took)
		if startedPaused {
			if err := destroyOn(req.TargetURI, name); err != nil {
				return fmt.Errorf("VM %s was migrated but could not be stopped on %s again: %w", name, req.TargetURI, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	// The domain now lives on the target with its own copies of the disks
	// and of the seed, and its own serial log.
	l.removeSeed(seed)
	l.removeSerialLog(def)
	// libvirt removes the TPM state of a domain that migrated out itself.
	l.removeNVRAM(def)
	for _, m := range migrated {
		if err := l.deleteVolumeByPath(ctx, m.path); err != nil {
			l.log.Warn("migrated: could not delete the source copy of a disk", "vm", name, "path", m.path, "err", err)
		}
	}
	// An encrypted shared volume stays, but this host no longer opens it:
	// its key need not stay registered here (a VM that comes back has it
	// registered again by its reservation or start).
	l.dropSharedSecrets(ctx, shared)
	progress(1)
	return nil
}

// migrateBandwidthMiBs is the migration bandwidth asked of libvirt, in
// MiB/s: in effect no limit.
const migrateBandwidthMiBs = 1 << 20

// liveMemoryCopy reports whether a running domain's memory may be copied
// while its vCPUs run. Only under KVM: QEMU 7.2's TCG loses guest writes
// during a live copy (most likely a write racing with a dirty-bitmap
// sync: TCG marks the page dirty before the store lands), and the guest
// wakes on the target with stale pages — seen as slab and list
// corruption and "virtio_net: id N is not a head!" panics after 3 to 15
// live moves of a busy TCG guest. A TCG domain is therefore paused while
// its memory is copied; its disks are still mirrored while it runs, and
// the guest keeps running on the target (same process state, no reboot).
// The pause lasts as long as the memory copy.
func liveMemoryCopy(def *libvirtxml.Domain) bool {
	return def.Type == domainKVM
}

// markMigrating records (uuid != "") or clears the domain whose migration
// copies away the files of migrated and the seed.
func (l *Libvirt) markMigrating(migrated []migratedDisk, seed, uuid string) {
	if l.test {
		return
	}
	paths := []string{}
	for _, m := range migrated {
		paths = append(paths, m.path)
	}
	if seed != "" {
		paths = append(paths, seed)
	}
	for _, p := range paths {
		m := l.readMeta(p)
		m.MigratingWith = uuid
		if err := l.writeMeta(p, m); err != nil {
			l.log.Warn("could not mark a migrating disk", "path", p, "err", err)
		}
	}
}

// RecoverMigrations settles, at startup, the migrations a previous
// kvm-hostd left behind; none of them has an operation any more. An
// outgoing migration still running is aborted (libvirt keeps the VM on
// this host; the next apply migrates it again). Files marked as migrating
// with a domain that is still defined here are unmarked (that migration
// failed); files marked with a domain that is no longer here are deleted,
// since that migration succeeded and the VM runs from its copies on the
// target: this is the cleanup MigrateVM would have done.
func (l *Libvirt) RecoverMigrations(ctx context.Context) error {
	if l.test {
		return nil
	}
	return l.do(ctx, func(c *libvirt.Connect) error {
		doms, err := c.ListAllDomains(0)
		if err != nil {
			return wrap(err, "list domains")
		}
		var migrating []string
		for i := range doms {
			d := &doms[i]
			if ji, err := d.GetJobStats(0); err == nil && ji.Type != libvirt.DOMAIN_JOB_NONE &&
				ji.OperationSet && ji.Operation == libvirt.DOMAIN_JOB_OPERATION_MIGRATION_OUT {
				name, _ := d.GetName()
				migrating = append(migrating, name)
				if err := d.AbortJob(); err != nil {
					l.log.Warn("could not abort a migration left running by a previous kvm-hostd", "name", name, "err", err)
				} else {
					l.log.Warn("aborted a migration left running by a previous kvm-hostd; the VM stays here", "name", name)
				}
			}
			d.Free()
		}
		// A migration can finish (and undefine the VM here) while it is
		// being aborted: wait until none is running, then see which VMs
		// are still here. Deciding on the first listing would keep the
		// source files of a VM that has just left.
		l.waitMigrationsSettled(ctx, c, migrating)
		doms, err = c.ListAllDomains(0)
		if err != nil {
			return wrap(err, "list domains")
		}
		here := map[string]bool{}
		for i := range doms {
			if uuid, err := doms[i].GetUUIDString(); err == nil {
				here[uuid] = true
			}
			doms[i].Free()
		}
		pools, err := c.ListAllStoragePools(libvirt.CONNECT_LIST_STORAGE_POOLS_ACTIVE)
		if err != nil {
			return wrap(err, "list pools")
		}
		for i := range pools {
			vols, err := pools[i].ListAllStorageVolumes(0)
			pools[i].Free()
			if err != nil {
				continue
			}
			for j := range vols {
				v := &vols[j]
				path, perr := v.GetPath()
				if perr == nil {
					l.recoverMigratedFile(v, path, here)
				}
				v.Free()
			}
		}
		return nil
	})
}

// waitMigrationsSettled waits (up to a minute) until each named domain is
// gone or has no job left.
func (l *Libvirt) waitMigrationsSettled(ctx context.Context, c *libvirt.Connect, names []string) {
	deadline := time.Now().Add(time.Minute)
	for _, name := range names {
		for time.Now().Before(deadline) && ctx.Err() == nil {
			d, err := c.LookupDomainByName(name)
			if err != nil {
				break // gone: it migrated
			}
			ji, err := d.GetJobStats(0)
			d.Free()
			if err != nil || ji.Type == libvirt.DOMAIN_JOB_NONE {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

func (l *Libvirt) recoverMigratedFile(v *libvirt.StorageVol, path string, here map[string]bool) {
	m := l.readMeta(path)
	switch {
	case m.MigratingWith == "":
	case here[m.MigratingWith]:
		m.MigratingWith = ""
		if err := l.writeMeta(path, m); err != nil {
			l.log.Warn("could not unmark a disk of a failed migration", "path", path, "err", err)
		}
	default:
		if err := v.Delete(0); err != nil {
			l.log.Warn("could not delete the source copy of a migrated disk", "path", path, "err", err)
			return
		}
		l.log.Warn("deleted the source copy of a disk whose VM migrated away before a restart", "path", path, "vm_uuid", m.MigratingWith)
	}
}

// copySeedTo uploads the seed ISO at path into the storage pool of the
// libvirt at uri that lives in the same directory, replacing any earlier
// copy. Hosts keep their pools at the same paths (a requirement of
// migration anyway), so the domain's CD-ROM path is valid there.
func copySeedTo(uri, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	c, err := libvirt.NewConnect(uri)
	if err != nil {
		return err
	}
	defer c.Close()
	p, err := c.LookupStoragePoolByTargetPath(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("the target has no storage pool at %s (its pool directories must match this host's): %w", filepath.Dir(path), err)
	}
	defer p.Free()
	_ = p.Refresh(0)
	return uploadVolume(c, p, filepath.Base(path), data, true)
}

// pingLibvirt opens the libvirt at uri and asks it one cheap question.
func pingLibvirt(uri string) error {
	c, err := libvirt.NewConnect(uri)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.GetLibVersion()
	return err
}

// destroyOn powers off a domain on another libvirt (a stopped VM that was
// started paused to copy its disks).
func destroyOn(uri, name string) error {
	c, err := libvirt.NewConnect(uri)
	if err != nil {
		return err
	}
	defer c.Close()
	d, err := c.LookupDomainByName(name)
	if err != nil {
		return err
	}
	defer d.Free()
	if a, err := d.IsActive(); err == nil && !a {
		return nil
	}
	return d.Destroy()
}

// deleteVolumeByPath deletes the volume at path (no error if it is gone).
func (l *Libvirt) deleteVolumeByPath(ctx context.Context, path string) error {
	return l.do(ctx, func(c *libvirt.Connect) error {
		v, err := c.LookupStorageVolByPath(path)
		if err != nil {
			if isCode(err, libvirt.ERR_NO_STORAGE_VOL) {
				return nil
			}
			return wrap(err, "volume %s", path)
		}
		defer v.Free()
		if err := v.Delete(0); err != nil {
			return wrap(err, "delete volume %s", path)
		}
		l.dropMeta(path)
		return nil
	})
}
