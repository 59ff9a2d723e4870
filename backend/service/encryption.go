package service

import (
	"context"
	"fmt"
	"slices"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// checkKey refuses, with a 409 naming host and key, an encrypted volume
// whose master key this host does not hold: it could never be unlocked
// here.
func (s *Service) checkKey(e *api.VolumeEncryption, pool, name string) error {
	k := e.KeyName()
	if k == "" {
		return nil
	}
	// A LUKS qcow2 file on a shared directory pool opens on every host
	// that holds the key: the migration target registers the disk's
	// secret when it reserves room for the VM (PutReservation), any host
	// registers it before it defines, attaches or starts a VM with it, and
	// kvm-hostd at its start for the VMs defined there. Other shared pool
	// types (rbd: QEMU's luks format on an RBD image) are not done.
	if s.sharedPools[pool] && s.poolTypes[pool] != "dir" {
		return api.Errorf(api.CodeInvalid, "volume %s/%s: encrypted disks on pool %s (type %s) are not supported; "+
			"encrypted disks can be on directory pools, shared or not, such as %s", pool, name, pool, s.poolTypes[pool], DefaultPool)
	}
	if slices.Contains(s.cfg.Keys, k) {
		return nil
	}
	held := "none"
	if len(s.cfg.Keys) > 0 {
		held = joinQuoted(s.cfg.Keys)
	}
	return conflict("host %s does not hold encryption key %q needed by volume %s/%s (it holds: %s); "+
		"put %s.key in its kvm-hostd --key-dir, or place the disk on a host that has it", s.cfg.Name, k, pool, name, held, k)
}

// hostKeyLabels gives the host the label key.NAME = "true" for each
// encryption key it holds, so placement can require the key the way it
// requires a PCI device. A label the operator set (--labels) wins.
func (s *Service) hostKeyLabels(h *api.Host) {
	for _, k := range s.cfg.Keys {
		if _, set := h.Labels[api.KeyLabel(k)]; !set {
			h.Labels[api.KeyLabel(k)] = "true"
		}
	}
}

func joinQuoted(names []string) string {
	out := ""
	for i, n := range names {
		if i > 0 {
			out += ", "
		}
		out += `"` + n + `"`
	}
	return out
}

// refuseEncryptedSnapshot refuses a snapshot of a VM with an encrypted
// disk. A snapshot here is QEMU's internal qcow2 snapshot of every disk
// (and of memory); kvm-hostd has not verified that path with LUKS-encrypted
// qcow2 images (nor reverting one), and a snapshot must never be silently
// partial, so it is refused whole, before anything is written.
func (s *Service) refuseEncryptedSnapshot(ctx context.Context, vm *api.VM) error {
	for _, d := range vm.Disks {
		pool := d.Pool
		if pool == "" {
			pool = DefaultPool
		}
		v, err := s.hv.GetVolume(ctx, pool, d.Volume)
		if err != nil {
			continue
		}
		if v.Encryption != nil {
			return invalid("VM %s has the encrypted disk %s/%s (key %q): snapshots of VMs with encrypted disks are not supported", vm.Name, pool, d.Volume, v.Encryption.Key)
		}
	}
	return nil
}

// maxReservationDisks bounds the shared disks a reservation names.
const maxReservationDisks = 64

// prepareSharedDisks checks, for a VM about to arrive by migration, each
// of its disks on a shared pool: this host serves the pool as shared and
// sees the volume; an encrypted one's secret is registered now, since
// QEMU opens the disk here before anything else would (409 naming host
// and key when the key is not held here).
func (s *Service) prepareSharedDisks(ctx context.Context, vm string, disks []api.ReservationDisk) error {
	if len(disks) > maxReservationDisks {
		return invalid("shared_disks: %d disks, at most %d", len(disks), maxReservationDisks)
	}
	for i, d := range disks {
		if err := api.ValidateName("pool", d.Pool); err != nil {
			return invalid("shared_disks[%d]: %s", i, err)
		}
		if err := api.ValidateName("volume", d.Volume); err != nil {
			return invalid("shared_disks[%d]: %s", i, err)
		}
		if err := s.poolServed(d.Pool); err != nil {
			return err
		}
		if !s.sharedPools[d.Pool] {
			return invalid("shared_disks[%d]: pool %s is not shared on host %s, so VM %s's volume %s/%s would not be there",
				i, d.Pool, s.cfg.Name, vm, d.Pool, d.Volume)
		}
		key, err := s.hv.RegisterVolumeSecret(ctx, d.Pool, d.Volume)
		if err != nil {
			return fmt.Errorf("VM %s cannot arrive on host %s: %w", vm, s.cfg.Name, err)
		}
		if key != "" {
			s.log.Info("registered the key of an arriving VM's encrypted shared disk", "vm", vm, "volume", d.Pool+"/"+d.Volume, "key", key)
		}
	}
	return nil
}
