package service

import (
	"context"
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
	// A disk's secret is registered by the host that creates or starts
	// it; a VM moving onto a shared volume does neither on its new host,
	// which would then have no secret to open it with. Until migration
	// registers it there, encrypted volumes stay on local pools.
	if s.sharedPools[pool] {
		return api.Errorf(api.CodeInvalid, "volume %s/%s: encrypted disks cannot be on shared pool %s yet (it would not open "+
			"on the host a VM migrates to); put it on a local pool such as %s", pool, name, pool, DefaultPool)
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
