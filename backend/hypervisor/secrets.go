package hypervisor

import (
	"bytes"
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"path/filepath"
	"slices"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Disk encryption. The operator gives every host that may run a VM the
// same named master keys (kvm-hostd --key-dir, NAME.key). A LUKS disk's
// passphrase is derived from its master key and its identity in the fleet,
// the pool and volume name:
//
//   - two disks never share a passphrase (no two volumes share a pool and
//     name on one host; a volume of the same name on another host is the
//     same disk, copied or migrated there);
//   - any host holding the master key derives the same passphrase, with
//     nothing to carry between hosts: a copied file's LUKS header opens
//     on the new host, and a live migration's target volume, created
//     fresh there, gets the passphrase the domain XML's secret expects;
//   - LUKS itself wraps a random volume key, generated each time a
//     volume is formatted, so a disk deleted and re-created under the same
//     name encrypts its data with a new key all the same.
//
// The passphrase reaches libvirt as a private, ephemeral secret (never
// written to disk by libvirtd, never readable through its API); the
// domain XML names it by a UUID that is itself derived from public names
// only, so the XML migrates unchanged. Ephemeral secrets do not survive a
// libvirtd restart, so kvm-hostd registers them at its own start and again
// before every domain start and migration.

// MinKeyBytes is the shortest master key kvm-hostd accepts.
const MinKeyBytes = 32

// deriveDiskKey is the LUKS passphrase of volume pool/vol encrypted with
// the master key named keyName: HKDF-SHA256 with the disk's identity as
// context, hex-encoded (QEMU reads a passphrase secret as text).
func deriveDiskKey(master []byte, keyName, pool, vol string) ([]byte, error) {
	k, err := hkdf.Key(sha256.New, master, nil, diskInfo("kvm-hostd luks passphrase v1", keyName, pool, vol), 32)
	if err != nil {
		return nil, err
	}
	out := make([]byte, hex.EncodedLen(len(k)))
	hex.Encode(out, k)
	clear(k)
	return out, nil
}

func diskInfo(purpose, keyName, pool, vol string) string {
	return purpose + "\x00" + keyName + "\x00" + pool + "\x00" + vol
}

// diskSecretUUID is the libvirt secret UUID of a disk: a name-based UUID
// (version 8, from SHA-256 of public names only) that every host computes
// alike, so the domain XML that references it is valid on every host.
func diskSecretUUID(keyName, pool, vol string) string {
	h := sha256.Sum256([]byte(diskInfo("kvm-hostd luks secret uuid v1", keyName, pool, vol)))
	u := h[:16]
	u[6] = (u[6] & 0x0f) | 0x80 // version 8
	u[8] = (u[8] & 0x3f) | 0x80 // RFC 9562 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// SetKeys gives the hypervisor the master keys, by name. They stay in
// this process's memory only.
func (l *Libvirt) SetKeys(keys map[string][]byte) {
	own := make(map[string][]byte, len(keys))
	for name, k := range keys {
		own[name] = bytes.Clone(k) // the caller may clear its copy
	}
	l.keysMu.Lock()
	defer l.keysMu.Unlock()
	l.keys = own
}

// KeyNames lists the names of the master keys this host holds.
func (l *Libvirt) KeyNames() []string {
	l.keysMu.Lock()
	defer l.keysMu.Unlock()
	return slices.Sorted(maps.Keys(l.keys))
}

func (l *Libvirt) masterKey(name string) ([]byte, bool) {
	l.keysMu.Lock()
	defer l.keysMu.Unlock()
	k, ok := l.keys[name]
	return k, ok
}

// missingKey is the 409 for a disk whose master key this host lacks.
func (l *Libvirt) missingKey(keyName, pool, vol string) error {
	return api.Errorf(api.CodeConflict, "host %s does not hold encryption key %q (needed by volume %s/%s): "+
		"put the same %s.key in this host's kvm-hostd --key-dir and restart it", l.hostName(), keyName, pool, vol, keyName)
}

func (l *Libvirt) hostName() string {
	if l.name != "" {
		return l.name
	}
	return "this host"
}

// SetHostName names the host in error messages.
func (l *Libvirt) SetHostName(name string) { l.name = name }

// diskEncryptionXML is the <encryption> of a domain disk's source: the
// secret by UUID only.
func diskEncryptionXML(keyName, pool, vol string) *libvirtxml.DomainDiskEncryption {
	return &libvirtxml.DomainDiskEncryption{Format: "luks",
		Secrets: []libvirtxml.DomainDiskSecret{{Type: "passphrase", UUID: diskSecretUUID(keyName, pool, vol)}}}
}

// ensureDiskSecret registers (or refreshes) the libvirt secret of an
// encrypted volume at path. On the test driver, which has no secrets and
// no data, it only checks the key is held.
func (l *Libvirt) ensureDiskSecret(c *libvirt.Connect, keyName, pool, vol, path string) error {
	master, ok := l.masterKey(keyName)
	if !ok {
		return l.missingKey(keyName, pool, vol)
	}
	if l.test {
		return nil
	}
	uuid := diskSecretUUID(keyName, pool, vol)
	// The usage (the volume's path) is unique among libvirt's secrets: a
	// secret left for a former volume at this path, under another key,
	// gives way.
	if old, err := c.LookupSecretByUsage(libvirt.SECRET_USAGE_TYPE_VOLUME, path); err == nil {
		ou, _ := old.GetUUIDString()
		if ou != uuid {
			_ = old.Undefine()
		}
		old.Free()
	}
	x := &libvirtxml.Secret{Ephemeral: "yes", Private: "yes", UUID: uuid,
		Description: "kvm-hostd disk key of " + pool + "/" + vol,
		Usage:       &libvirtxml.SecretUsage{Type: "volume", Volume: path}}
	doc, err := x.Marshal()
	if err != nil {
		return err
	}
	s, err := c.SecretDefineXML(doc, 0)
	if err != nil {
		return wrap(err, "register the key of volume %s/%s", pool, vol)
	}
	defer s.Free()
	pass, err := deriveDiskKey(master, keyName, pool, vol)
	if err != nil {
		return err
	}
	defer clear(pass)
	if err := s.SetValue(pass, 0); err != nil {
		return wrap(err, "set the key of volume %s/%s", pool, vol)
	}
	return nil
}

// dropDiskSecret forgets an encrypted volume's secret (volume deleted).
func (l *Libvirt) dropDiskSecret(c *libvirt.Connect, keyName, pool, vol string) {
	if l.test || keyName == "" {
		return
	}
	s, err := c.LookupSecretByUUIDString(diskSecretUUID(keyName, pool, vol))
	if err != nil {
		return
	}
	defer s.Free()
	_ = s.Undefine()
}

// ensureDomainSecrets registers the secrets of every encrypted disk of a
// domain definition before it starts (or is migrated): libvirtd may have
// restarted since and lost the ephemeral ones.
func (l *Libvirt) ensureDomainSecrets(c *libvirt.Connect, x *libvirtxml.Domain) error {
	for _, disk := range diskList(x) {
		if disk.Source == nil || disk.Source.Encryption == nil {
			continue
		}
		path := diskPath(&disk)
		v, err := c.LookupStorageVolByPath(path)
		if err != nil {
			return wrap(err, "encrypted disk %s", path)
		}
		name, _ := v.GetName()
		var pool string
		if p, err := v.LookupPoolByVolume(); err == nil {
			pool, _ = p.GetName()
			p.Free()
		}
		v.Free()
		m := l.readMeta(path)
		if m.EncryptionKey == "" {
			return api.Errorf(api.CodeConflict, "disk %s is encrypted in the domain definition, but volume %s/%s records no key", path, pool, name)
		}
		if err := l.ensureDiskSecret(c, m.EncryptionKey, pool, name, path); err != nil {
			return err
		}
	}
	return nil
}

// ensureSecretsOf is ensureDomainSecrets for a domain handle.
func (l *Libvirt) ensureSecretsOf(c *libvirt.Connect, d *libvirt.Domain) error {
	x, err := domXML(d, libvirt.DOMAIN_XML_INACTIVE)
	if err != nil {
		return err
	}
	return l.ensureDomainSecrets(c, x)
}

// RegisterDiskSecrets registers the secret of every encrypted volume in
// the given (local) pools and of every encrypted disk of the domains
// defined on this host (kvm-hostd start), so VMs start and migrations
// arrive after a restart of libvirtd or kvm-hostd. The volumes of a
// shared pool are not all registered: most belong to VMs of other hosts;
// this host needs those of its own domains, and those of a VM arriving
// by migration (RegisterVolumeSecret). A volume whose key this host lacks
// is logged, not fatal: its VM is refused when it starts.
func (l *Libvirt) RegisterDiskSecrets(ctx context.Context, pools []string) error {
	if err := l.registerPoolSecrets(ctx, pools); err != nil {
		return err
	}
	if l.test {
		return nil
	}
	return l.do(ctx, func(c *libvirt.Connect) error {
		doms, err := c.ListAllDomains(0)
		if err != nil {
			return wrap(err, "list domains")
		}
		for i := range doms {
			name, _ := doms[i].GetName()
			if err := l.ensureSecretsOf(c, &doms[i]); err != nil {
				l.log.Warn("an encrypted disk of a VM cannot be unlocked on this host", "vm", name, "err", err)
			}
			doms[i].Free()
		}
		return nil
	})
}

// RegisterVolumeSecret registers the secret of the existing volume
// pool/vol if it is encrypted, and returns its key name ("" for a plain
// volume). A migration target calls it for each disk on a shared pool
// that the arriving VM opens in place: nothing else would create or start
// that volume here before QEMU opens it. A host without the key refuses
// with a 409 naming host and key.
func (l *Libvirt) RegisterVolumeSecret(ctx context.Context, pool, vol string) (string, error) {
	var key string
	err := l.withPool(ctx, pool, true, func(c *libvirt.Connect, p *libvirt.StoragePool) error {
		v, err := p.LookupStorageVolByName(vol)
		if err != nil {
			return wrap(err, "volume %s/%s", pool, vol)
		}
		defer v.Free()
		path, err := v.GetPath()
		if err != nil {
			return wrap(err, "volume %s/%s", pool, vol)
		}
		key = l.readMeta(path).EncryptionKey
		if key == "" {
			return nil
		}
		return l.ensureDiskSecret(c, key, pool, vol, path)
	})
	return key, err
}

// dropSharedSecrets forgets the secrets of the encrypted shared disks of
// a VM that has left this host.
func (l *Libvirt) dropSharedSecrets(ctx context.Context, disks []sharedDisk) {
	enc := false
	for _, d := range disks {
		enc = enc || d.key != ""
	}
	if !enc {
		return
	}
	_ = l.do(ctx, func(c *libvirt.Connect) error {
		for _, d := range disks {
			l.dropDiskSecret(c, d.key, d.pool, d.volume)
		}
		return nil
	})
}

func (l *Libvirt) registerPoolSecrets(ctx context.Context, pools []string) error {
	for _, pool := range pools {
		err := l.withPool(ctx, pool, true, func(c *libvirt.Connect, p *libvirt.StoragePool) error {
			vols, err := p.ListAllStorageVolumes(0)
			if err != nil {
				return wrap(err, "list volumes of %s", pool)
			}
			for i := range vols {
				name, _ := vols[i].GetName()
				path, _ := vols[i].GetPath()
				vols[i].Free()
				m := l.readMeta(path)
				if m.EncryptionKey == "" {
					continue
				}
				if err := l.ensureDiskSecret(c, m.EncryptionKey, pool, name, path); err != nil {
					l.log.Warn("encrypted volume cannot be unlocked on this host", "volume", pool+"/"+name, "key", m.EncryptionKey, "err", err)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// poolVolumePath is where a new volume of a directory pool will be.
func (l *Libvirt) poolVolumePath(p *libvirt.StoragePool, name string) (string, error) {
	doc, err := p.GetXMLDesc(0)
	if err != nil {
		return "", wrap(err, "read pool")
	}
	x := &libvirtxml.StoragePool{}
	if err := x.Unmarshal(doc); err != nil {
		return "", err
	}
	if x.Target == nil || x.Target.Path == "" {
		return "", api.Errorf(api.CodeInvalid, "pool %s has no directory: encrypted volumes need a directory pool", x.Name)
	}
	return filepath.Join(x.Target.Path, name), nil
}
