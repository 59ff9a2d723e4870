package hypervisor

import (
	"context"
	"strconv"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// snapshotOf reads a snapshot back; recorded says what was asked for.
func snapshotOf(vm string, s *libvirt.DomainSnapshot, recorded map[string]bool) (*api.Snapshot, error) {
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
	if mem, ok := recorded[x.Name]; ok {
		out.IncludeMemory = mem
	} else {
		out.IncludeMemory = x.Memory != nil && x.Memory.Snapshot != "" && x.Memory.Snapshot != "no"
	}
	if cur, err := s.IsCurrent(0); err == nil {
		out.Current = cur
	}
	return out, nil
}

func snapRecords(m *instanceMeta) map[string]bool {
	r := map[string]bool{}
	for _, s := range m.Snapshots {
		r[s.Name] = s.IncludeMemory
	}
	return r
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
		m, err := persistedMeta(d)
		if err != nil {
			return wrap(err, "read domain %s", vm)
		}
		rec := snapRecords(m)
		snaps, err := d.ListAllSnapshots(0)
		if err != nil {
			return wrap(err, "list snapshots of %s", vm)
		}
		for i := range snaps {
			s, err := snapshotOf(vm, &snaps[i], rec)
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
		m, err := persistedMeta(d)
		if err != nil {
			return wrap(err, "read domain %s", vm)
		}
		s, err := d.SnapshotLookupByName(name, 0)
		if err != nil {
			return wrap(err, "snapshot %s of %s", name, vm)
		}
		defer s.Free()
		out, err = snapshotOf(vm, s, snapRecords(m))
		return wrap(err, "read snapshot %s of %s", name, vm)
	})
	return out, err
}

// CreateSnapshot takes an internal snapshot: with memory (a full system
// checkpoint) when asked for on a running domain, else of the disks.
// QEMU (libvirt 9.0) cannot take an internal disk-only snapshot of a
// running domain, and external ones cannot be reverted there, so a running
// domain is always checkpointed with memory; what was asked for is recorded
// in our metadata and reported back.
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
		if spec.IncludeMemory && !active {
			return api.Errorf(api.CodeInvalid, "%s is not running: a snapshot with memory needs a running VM", vm)
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
