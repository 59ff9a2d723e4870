package hypervisor

import (
	"context"
	"strconv"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// snapshotOf reads a snapshot back from libvirt, include_memory too: it
// is what libvirt took, never what was asked for.
func snapshotOf(vm string, s *libvirt.DomainSnapshot) (*api.Snapshot, error) {
	doc, err := s.GetXMLDesc(0)
	if err != nil {
		return nil, err
	}
	var x libvirtxml.DomainSnapshot
	if err := x.Unmarshal(doc); err != nil {
		return nil, err
	}
	out := &api.Snapshot{Name: x.Name, VM: vm, Description: x.Description, State: x.State}
	if sec, err := strconv.ParseInt(x.CreationTime, 10, 64); err == nil {
		out.CreatedAt = time.Unix(sec, 0).UTC()
	}
	if x.Parent != nil {
		out.Parent = x.Parent.Name
	}
	out.IncludeMemory = snapshotHasMemory(&x)
	if cur, err := s.IsCurrent(0); err == nil {
		out.Current = cur
	}
	return out, nil
}

// snapshotHasMemory reports whether libvirt stored the guest's memory in a
// snapshot: its <memory snapshot=...> when the driver writes one (QEMU
// does: "internal" or "external", "no"), else its state, since a snapshot
// of a running or paused domain that is not disk-only is a full system
// checkpoint (the test driver writes no <memory>).
func snapshotHasMemory(x *libvirtxml.DomainSnapshot) bool {
	if x.Memory != nil && x.Memory.Snapshot != "" {
		return x.Memory.Snapshot != "no"
	}
	switch x.State {
	case "running", "paused", "blocked", "pmsuspended":
		return true
	}
	return false
}

// persistedMeta reads our metadata from the persistent definition.
func persistedMeta(d *libvirt.Domain) (*instanceMeta, error) {
	x, err := domXML(d, libvirt.DOMAIN_XML_INACTIVE)
	if err != nil {
		return nil, err
	}
	return metaOf(x), nil
}

// saveMeta writes our metadata to the persistent and the live definition.
func saveMeta(d *libvirt.Domain, m *instanceMeta) error {
	s, err := marshalMetaBare(m)
	if err != nil {
		return err
	}
	flags := libvirt.DOMAIN_AFFECT_CONFIG
	if a, _ := d.IsActive(); a {
		flags |= libvirt.DOMAIN_AFFECT_LIVE
	}
	return d.SetMetadata(libvirt.DOMAIN_METADATA_ELEMENT, s, metaPrefix, metaNS, flags)
}

// ListSnapshots lists a domain's snapshots.
func (l *Libvirt) ListSnapshots(ctx context.Context, vm string) ([]api.Snapshot, error) {
	var out []api.Snapshot
	err := l.withDomain(ctx, vm, func(c *libvirt.Connect, d *libvirt.Domain) error {
		out = nil
		snaps, err := d.ListAllSnapshots(0)
		if err != nil {
			return wrap(err, "list snapshots of %s", vm)
		}
		for i := range snaps {
			s, err := snapshotOf(vm, &snaps[i])
			snaps[i].Free()
			if err != nil {
				continue // deleted meanwhile
			}
			out = append(out, *s)
		}
		return nil
	})
	return out, err
}

// GetSnapshot reads one snapshot.
func (l *Libvirt) GetSnapshot(ctx context.Context, vm, name string) (*api.Snapshot, error) {
	var out *api.Snapshot
	err := l.withDomain(ctx, vm, func(c *libvirt.Connect, d *libvirt.Domain) error {
		s, err := d.SnapshotLookupByName(name, 0)
		if err != nil {
			return wrap(err, "snapshot %s of %s", name, vm)
		}
		defer s.Free()
		out, err = snapshotOf(vm, s)
		return wrap(err, "read snapshot %s of %s", name, vm)
	})
	return out, err
}

// CreateSnapshot takes an internal snapshot: of a running domain with its
// memory (a full system checkpoint), of a stopped one of its disks.
//
// A snapshot without memory of a running domain is refused.
// libvirt's QEMU driver refuses internal disk-only snapshots of a running
// domain ("internal snapshot of a running VM must include the memory
// state"), and the alternative, an external disk-only snapshot, would put
// a new overlay on top of every disk: linked clones, volume moves and
// migration all rely on the disk chain that kvm_disk defined, and libvirt
// 9.0 cannot revert external snapshots. Taking a checkpoint anyway and
// reporting "no memory" would make state disagree with libvirt.
func (l *Libvirt) CreateSnapshot(ctx context.Context, vm, name string, spec api.SnapshotSpec) (*api.Snapshot, error) {
	err := l.withDomain(ctx, vm, func(c *libvirt.Connect, d *libvirt.Domain) error {
		if s, err := d.SnapshotLookupByName(name, 0); err == nil {
			s.Free()
			return api.Errorf(api.CodeConflict, "snapshot %s of %s already exists", name, vm)
		}
		active, err := d.IsActive()
		if err != nil {
			return wrap(err, "state of %s", vm)
		}
		if x, err := domXML(d, libvirt.DOMAIN_XML_INACTIVE); err != nil {
			return wrap(err, "read domain %s", vm)
		} else if nvramPath(x) != "" || metaOf(x).Firmware == api.FirmwareEFI {
			// libvirt 9.0 refuses an internal snapshot of a running VM
			// with pflash firmware, and one of a stopped VM would leave
			// out its NVRAM: a revert would pair old disks with new
			// variables (boot entries, keys).
			return api.Errorf(api.CodeUnsupported, "%s boots UEFI (firmware = efi): libvirt cannot take an internal snapshot "+
				"of a VM with a UEFI variable store", vm)
		}
		if spec.IncludeMemory && !active {
			return api.Errorf(api.CodeInvalid, "%s is not running: a snapshot with memory needs a running VM", vm)
		}
		if !spec.IncludeMemory && active {
			return api.Errorf(api.CodeInvalid, "%s is running: %s", vm, api.SnapshotNeedsMemoryReason)
		}
		x := &libvirtxml.DomainSnapshot{Name: name, Description: spec.Description}
		doc, err := x.Marshal()
		if err != nil {
			return err
		}
		flags := libvirt.DOMAIN_SNAPSHOT_CREATE_ATOMIC
		s, err := d.CreateSnapshotXML(doc, flags)
		if err != nil {
			return wrap(err, "snapshot %s of %s", name, vm)
		}
		s.Free()
		m, err := persistedMeta(d)
		if err != nil {
			return wrap(err, "read domain %s", vm)
		}
		m.Snapshots = append(dropSnap(m.Snapshots, name), metaSnap{Name: name, IncludeMemory: spec.IncludeMemory})
		return wrap(saveMeta(d, m), "record snapshot %s", name)
	})
	if err != nil {
		return nil, err
	}
	return l.GetSnapshot(ctx, vm, name)
}

func dropSnap(in []metaSnap, name string) []metaSnap {
	out := in[:0:0]
	for _, s := range in {
		if s.Name != name {
			out = append(out, s)
		}
	}
	return out
}

// RevertSnapshot returns a domain to a snapshot, in the run state it had
// then. Reverting restores the snapshot's copy of our metadata too, so the
// snapshot records are carried over.
func (l *Libvirt) RevertSnapshot(ctx context.Context, vm, name string) error {
	return l.withDomain(ctx, vm, func(c *libvirt.Connect, d *libvirt.Domain) error {
		before, err := persistedMeta(d)
		if err != nil {
			return wrap(err, "read domain %s", vm)
		}
		s, err := d.SnapshotLookupByName(name, 0)
		if err != nil {
			return wrap(err, "snapshot %s of %s", name, vm)
		}
		defer s.Free()
		doc, err := s.GetXMLDesc(0)
		if err != nil {
			return wrap(err, "read snapshot %s", name)
		}
		var x libvirtxml.DomainSnapshot
		if err := x.Unmarshal(doc); err != nil {
			return err
		}
		flags := libvirt.DOMAIN_SNAPSHOT_REVERT_FORCE
		switch x.State {
		case "running":
			flags |= libvirt.DOMAIN_SNAPSHOT_REVERT_RUNNING
		case "paused":
			flags |= libvirt.DOMAIN_SNAPSHOT_REVERT_PAUSED
		}
		if err := s.RevertToSnapshot(flags); err != nil {
			return wrap(err, "revert %s to %s", vm, name)
		}
		after, err := persistedMeta(d)
		if err != nil {
			return wrap(err, "read domain %s", vm)
		}
		after.Snapshots = before.Snapshots
		return wrap(saveMeta(d, after), "record snapshots of %s", vm)
	})
}

// DeleteSnapshot deletes one snapshot (its children are re-parented).
func (l *Libvirt) DeleteSnapshot(ctx context.Context, vm, name string) error {
	return l.withDomain(ctx, vm, func(c *libvirt.Connect, d *libvirt.Domain) error {
		s, err := d.SnapshotLookupByName(name, 0)
		if err != nil {
			return wrap(err, "snapshot %s of %s", name, vm)
		}
		defer s.Free()
		if err := s.Delete(0); err != nil {
			return wrap(err, "delete snapshot %s of %s", name, vm)
		}
		m, err := persistedMeta(d)
		if err != nil {
			return wrap(err, "read domain %s", vm)
		}
		m.Snapshots = dropSnap(m.Snapshots, name)
		return wrap(saveMeta(d, m), "record snapshots of %s", vm)
	})
}
