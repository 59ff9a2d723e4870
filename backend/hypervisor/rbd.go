package hypervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Ceph RBD pools. The operator defines the libvirt rbd pool and its ceph
// secret; kvm-hostd only ever names the secret's UUID (read from the pool's
// definition) and never sees the key. libvirt 9.0's rbd backend creates,
// resizes, deletes and clones volumes (a volume created from another in the
// same pool is an RBD layered clone: a protected snapshot of the origin and
// a copy-on-write child, O(1) whatever the size). It cannot upload or
// download, and `<disk type='volume'>` does not accept rbd pools, so:
//   - a domain's rbd disk is a network disk built from the pool's
//     definition (monitors, user, secret UUID);
//   - an image is imported by QEMU itself: staged as a file in the local
//     "default" pool, then block-copied into the rbd volume by a paused,
//     throwaway domain (QEMU converts qcow2 to raw on the way);
//   - what libvirt does not model (the base of a clone, source_url, I/O
//     limits) cannot hang on a file's extended attribute: it is kept in
//     files under the state directory (see netMetaFile).

// rbdPool is what a domain's network disk on an rbd pool needs.
type rbdPool struct {
	source string // the Ceph pool
	hosts  []libvirtxml.DomainDiskSourceHost
	user   string
	secret string // UUID of the libvirt secret holding the key
}

// rbdPoolOf reads a pool's definition; nil when it is not an rbd pool.
func rbdPoolOf(p *libvirt.StoragePool) (*rbdPool, error) {
	doc, err := p.GetXMLDesc(0)
	if err != nil {
		return nil, wrap(err, "pool definition")
	}
	var x libvirtxml.StoragePool
	if err := x.Unmarshal(doc); err != nil {
		return nil, err
	}
	if x.Type != "rbd" || x.Source == nil {
		return nil, nil
	}
	r := &rbdPool{source: x.Source.Name}
	for _, h := range x.Source.Host {
		r.hosts = append(r.hosts, libvirtxml.DomainDiskSourceHost{Name: h.Name, Port: h.Port})
	}
	if a := x.Source.Auth; a != nil {
		r.user = a.Username
		if a.Secret != nil {
			r.secret = a.Secret.UUID
		}
	}
	return r, nil
}

// rbdPoolNamed is rbdPoolOf by pool name.
func rbdPoolNamed(c *libvirt.Connect, pool string) (*rbdPool, error) {
	p, err := c.LookupStoragePoolByName(pool)
	if err != nil {
		return nil, wrap(err, "pool %s", pool)
	}
	defer p.Free()
	return rbdPoolOf(p)
}

// diskSource is the network source of the rbd image at path ("pool/image",
// libvirt's path of an rbd volume).
func (r *rbdPool) diskSource(path string) *libvirtxml.DomainDiskSource {
	n := &libvirtxml.DomainDiskSourceNetwork{Protocol: "rbd", Name: path, Hosts: r.hosts}
	if r.user != "" {
		n.Auth = &libvirtxml.DomainDiskAuth{Username: r.user}
		if r.secret != "" {
			n.Auth.Secret = &libvirtxml.DomainDiskSecret{Type: "ceph", UUID: r.secret}
		}
	}
	return &libvirtxml.DomainDiskSource{Network: n}
}

// SetStateDir names the directory where kvm-hostd keeps what it knows
// about volumes that are not files (rbd images): see netMetaFile.
func (l *Libvirt) SetStateDir(dir string) {
	l.memMu.Lock()
	defer l.memMu.Unlock()
	l.stateDir = dir
}

// netMetaFile is where the extras of a volume that is not a file live:
// one JSON file per volume path under the state directory. They are this
// host's record: another host serving the same rbd pool learns a
// volume's extras when its kvm_disk moves there (AdoptVolume).
func (l *Libvirt) netMetaFile(path string) (string, error) {
	l.memMu.Lock()
	dir := l.stateDir
	l.memMu.Unlock()
	if dir == "" {
		return "", api.Errorf(api.CodeUnsupported, "volume %s is not a file and kvm-hostd has no --state-dir to record its metadata in", path)
	}
	return filepath.Join(dir, "volume-meta", url.PathEscape(path)+".json"), nil
}

func (l *Libvirt) readNetMeta(path string) volMeta {
	var m volMeta
	f, err := l.netMetaFile(path)
	if err != nil {
		return m
	}
	b, err := os.ReadFile(f)
	if err != nil {
		return m
	}
	if err := json.Unmarshal(b, &m); err != nil {
		l.log.Warn("unreadable volume metadata", "path", path, "file", f, "err", err)
	}
	return m
}

func (l *Libvirt) writeNetMeta(path string, m volMeta) error {
	f, err := l.netMetaFile(path)
	if err != nil {
		if m.isZero() {
			return nil
		}
		return err
	}
	if m.isZero() {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("clear metadata of %s: %w", path, err)
		}
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(f), 0o700); err != nil {
		return fmt.Errorf("record metadata of %s: %w", path, err)
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	// Atomic: a crash leaves the old record or the new one.
	tmp := f + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("record metadata of %s: %w", path, err)
	}
	if err := os.Rename(tmp, f); err != nil {
		return fmt.Errorf("record metadata of %s: %w", path, err)
	}
	return nil
}

// isFilePath tells a volume that is a file (extended attributes hold its
// extras) from a network volume such as an rbd image ("pool/image").
func isFilePath(path string) bool { return filepath.IsAbs(path) }

// createRBDVolume creates a raw rbd image, or an RBD layered clone of
// spec.BaseVolume (libvirt snapshots and protects the base, then clones:
// nothing is copied), grown to spec.SizeMiB if that is larger.
func (l *Libvirt) createRBDVolume(p *libvirt.StoragePool, pool, name string, spec api.VolumeSpec) error {
	if spec.Format != "" && spec.Format != api.FormatRaw {
		return api.Errorf(api.CodeInvalid, "pool %s is an rbd pool: its volumes are raw (format %q; set format = \"raw\")", pool, spec.Format)
	}
	if spec.Encryption.KeyName() != "" {
		return api.Errorf(api.CodeInvalid, "pool %s is an rbd pool: encrypted disks are not supported there", pool)
	}
	capacity := uint64(spec.SizeMiB) * mib
	x := &libvirtxml.StorageVolume{
		Name:     name,
		Capacity: &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: capacity},
		Target:   &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: api.FormatRaw}},
	}
	var v *libvirt.StorageVol
	if spec.BaseVolume != "" {
		bv, err := p.LookupStorageVolByName(spec.BaseVolume)
		if err != nil {
			return wrap(err, "base volume %s/%s", pool, spec.BaseVolume)
		}
		defer bv.Free()
		base, _, err := l.volumeOf(pool, bv)
		if err != nil {
			return wrap(err, "base volume %s/%s", pool, spec.BaseVolume)
		}
		if uint64(base.SizeMiB)*mib > capacity {
			x.Capacity.Value = uint64(base.SizeMiB) * mib
		}
		doc, err := x.Marshal()
		if err != nil {
			return err
		}
		if v, err = p.StorageVolCreateXMLFrom(doc, bv, 0); err != nil {
			return wrap(err, "clone volume %s/%s from %s", pool, name, spec.BaseVolume)
		}
		// The clone has its base's size.
		if x.Capacity.Value > uint64(base.SizeMiB)*mib {
			if err := v.Resize(x.Capacity.Value, 0); err != nil {
				_ = v.Delete(0)
				v.Free()
				return wrap(err, "grow clone %s/%s", pool, name)
			}
		}
	} else {
		if capacity == 0 {
			return api.Errorf(api.CodeInvalid, "volume size_mib must be positive")
		}
		doc, err := x.Marshal()
		if err != nil {
			return err
		}
		if v, err = p.StorageVolCreateXML(doc, 0); err != nil {
			return wrap(err, "create volume %s/%s", pool, name)
		}
	}
	defer v.Free()
	return l.recordNewVolume(v, volMeta{SourceURL: spec.SourceURL, SourceChecksum: spec.SourceChecksum, Base: spec.BaseVolume}, spec.IOTune)
}

// AdoptVolume records what spec says of a volume this host did not
// create and knows nothing about: an rbd image another host serving the
// same pool created (its kvm_disk moved here with its VM). It reports
// whether it adopted; a volume this host has a record of, or a file
// (whose extended attributes every host sees), is never rewritten.
func (l *Libvirt) AdoptVolume(ctx context.Context, pool, name string, spec api.VolumeSpec) (bool, error) {
	adopted := false
	err := l.withPool(ctx, pool, false, func(c *libvirt.Connect, p *libvirt.StoragePool) error {
		rp, err := rbdPoolOf(p)
		if err != nil || rp == nil {
			return err
		}
		v, err := p.LookupStorageVolByName(name)
		if err != nil {
			return wrap(err, "volume %s/%s", pool, name)
		}
		defer v.Free()
		path, err := v.GetPath()
		if err != nil {
			return wrap(err, "volume path")
		}
		f, err := l.netMetaFile(path)
		if err != nil {
			return err
		}
		if _, err := os.Stat(f); err == nil {
			return nil
		}
		if spec.BaseVolume != "" {
			if bv, err := p.LookupStorageVolByName(spec.BaseVolume); err != nil {
				return wrap(err, "base volume %s/%s", pool, spec.BaseVolume)
			} else {
				bv.Free()
			}
		}
		m := volMeta{SourceURL: spec.SourceURL, SourceChecksum: spec.SourceChecksum, Base: spec.BaseVolume}
		if !spec.IOTune.IsZero() {
			t := *spec.IOTune
			m.IOTune = &t
		}
		if m.isZero() {
			return nil
		}
		if err := l.writeNetMeta(path, m); err != nil {
			return err
		}
		adopted = true
		return nil
	})
	return adopted, err
}

// stagingPool holds images on their way into an rbd pool.
const stagingPool = "default"

// stageRBDWrite writes an image for the rbd volume pool/name into a file of
// the local staging pool under the same name (a partial volume's name: the
// startup sweep deletes it if kvm-hostd dies meanwhile). renameRBDVolume
// then imports it.
func (l *Libvirt) stageRBDWrite(ctx context.Context, name string, write func(pool, name string) error) error {
	if err := l.withPool(ctx, stagingPool, false, func(c *libvirt.Connect, p *libvirt.StoragePool) error {
		if v, err := p.LookupStorageVolByName(name); err == nil {
			defer v.Free()
			return nil
		}
		x := &libvirtxml.StorageVolume{Name: name,
			Capacity:   &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: mib},
			Allocation: &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: 0},
			Target:     &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: api.FormatRaw}}}
		doc, err := x.Marshal()
		if err != nil {
			return err
		}
		v, err := p.StorageVolCreateXML(doc, 0)
		if err != nil {
			return wrap(err, "staging volume %s/%s", stagingPool, name)
		}
		v.Free()
		return nil
	}); err != nil {
		return err
	}
	return write(stagingPool, name)
}

// dropStaged deletes the staged image of name, if any.
func (l *Libvirt) dropStaged(c *libvirt.Connect, name string) {
	p, err := c.LookupStoragePoolByName(stagingPool)
	if err != nil {
		return
	}
	defer p.Free()
	if v, err := p.LookupStorageVolByName(name); err == nil {
		_ = v.Delete(0)
		v.Free()
	}
}

// stagedPath is the file of name's staged image, "" when there is none.
func stagedPath(c *libvirt.Connect, name string) string {
	p, err := c.LookupStoragePoolByName(stagingPool)
	if err != nil {
		return ""
	}
	defer p.Free()
	v, err := p.LookupStorageVolByName(name)
	if err != nil {
		return ""
	}
	defer v.Free()
	path, _ := v.GetPath()
	return path
}

// renameRBDVolume gives an rbd volume another name. libvirt cannot rename
// rbd images, so this is only for a partial volume being filled: its
// staged image is imported under the new name (refused when none is
// staged), and the partial volume and the staged file are deleted.
func (l *Libvirt) renameRBDVolume(ctx context.Context, c *libvirt.Connect, p *libvirt.StoragePool, rp *rbdPool, pool, from, to string) error {
	staged := stagedPath(c, from)
	if staged == "" {
		return api.Errorf(api.CodeUnsupported, "rbd volumes cannot be renamed (%s/%s to %s)", pool, from, to)
	}
	info, err := inspectImage(ctx, staged)
	if err != nil {
		return err
	}
	if info.BackingFile != "" || info.DataFile != "" {
		return api.Errorf(api.CodeInvalid, "the image for %s/%s names another file; refused", pool, to)
	}
	old, err := p.LookupStorageVolByName(from)
	if err != nil {
		return wrap(err, "volume %s/%s", pool, from)
	}
	defer old.Free()
	oldPath, _ := old.GetPath()
	cur, _, err := l.volumeOf(pool, old)
	if err != nil {
		return err
	}
	size, err := imageVirtualSize(ctx, staged)
	if err != nil {
		return err
	}
	if want := uint64(cur.SizeMiB) * mib; want > size {
		size = want
	}
	size = (size + mib - 1) / mib * mib
	x := &libvirtxml.StorageVolume{Name: to,
		Capacity: &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: size},
		Target:   &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: api.FormatRaw}}}
	doc, err := x.Marshal()
	if err != nil {
		return err
	}
	nv, err := p.StorageVolCreateXML(doc, 0)
	if err != nil {
		if isCode(err, libvirt.ERR_STORAGE_VOL_EXIST) {
			return api.Errorf(api.CodeConflict, "volume %s/%s already exists", pool, to)
		}
		return wrap(err, "create volume %s/%s", pool, to)
	}
	defer nv.Free()
	newPath, _ := nv.GetPath()
	// Until the copy completes the image exists under its final name:
	// marked, so that a kvm-hostd killed meanwhile deletes it at start.
	if err := l.writeMeta(newPath, volMeta{Filling: true}); err != nil {
		_ = nv.Delete(0)
		return err
	}
	t0 := time.Now()
	if err := l.blockCopyInto(ctx, c, staged, info.Format, rp.diskSource(newPath)); err != nil {
		_ = nv.Delete(0)
		_ = l.writeMeta(newPath, volMeta{})
		return fmt.Errorf("importing the image into %s/%s: %w", pool, to, err)
	}
	m := l.readMeta(oldPath)
	if err := l.writeMeta(newPath, m); err != nil {
		_ = nv.Delete(0)
		_ = l.writeMeta(newPath, volMeta{})
		return err
	}
	l.log.Info("image imported into rbd", "volume", pool+"/"+to, "format", info.Format, "bytes", size, "took", time.Since(t0).Round(time.Millisecond))
	_ = old.Delete(0)
	_ = l.writeMeta(oldPath, volMeta{})
	l.dropStaged(c, from)
	return nil
}

// imageVirtualSize is the disk size an image file describes.
func imageVirtualSize(ctx context.Context, path string) (uint64, error) {
	out, err := runQemuImgInfo(ctx, path)
	if err != nil {
		return 0, err
	}
	var info struct {
		VirtualSize uint64 `json:"virtual-size"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return 0, fmt.Errorf("inspecting image %s: %v", path, err)
	}
	return info.VirtualSize, nil
}

// blockCopyInto copies the image file src (of format) into the network
// disk dst with QEMU's mirror job, in a paused throwaway domain: QEMU
// authenticates with the secret the pool names, so kvm-hostd never holds
// the key, and writes only the image's data (a sparse target stays
// sparse). The domain is transient and auto-destroyed with the
// connection, so a crash of kvm-hostd leaves nothing running.
func (l *Libvirt) blockCopyInto(ctx context.Context, c *libvirt.Connect, src, format string, dst *libvirtxml.DomainDiskSource) error {
	name := "kvm-hostd-import-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	x := &libvirtxml.Domain{
		Type:   l.virtType,
		Name:   name,
		Memory: &libvirtxml.DomainMemory{Value: 32, Unit: "MiB"},
		VCPU:   &libvirtxml.DomainVCPU{Value: 1},
		OS:     &libvirtxml.DomainOS{Type: &libvirtxml.DomainOSType{Type: "hvm", Arch: "x86_64"}},
		Devices: &libvirtxml.DomainDeviceList{
			Disks: []libvirtxml.DomainDisk{{
				Device: "disk",
				Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: format},
				Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: src}},
				Target: &libvirtxml.DomainDiskTarget{Dev: "vda", Bus: "virtio"},
				// The format is given: QEMU must not follow a backing
				// file named in the image.
				BackingStore: &libvirtxml.DomainDiskBackingStore{},
			}},
			MemBalloon: &libvirtxml.DomainMemBalloon{Model: "none"},
		},
	}
	doc, err := x.Marshal()
	if err != nil {
		return err
	}
	d, err := c.DomainCreateXML(doc, libvirt.DOMAIN_START_PAUSED|libvirt.DOMAIN_START_AUTODESTROY)
	if err != nil {
		return wrap(err, "start the import domain")
	}
	defer func() {
		_ = d.Destroy()
		_ = d.Free()
	}()
	dst2 := libvirtxml.DomainDisk{Device: "disk",
		Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: api.FormatRaw},
		Source: dst}
	ddoc, err := dst2.Marshal()
	if err != nil {
		return err
	}
	if err := d.BlockCopy("vda", ddoc, &libvirt.DomainBlockCopyParameters{}, libvirt.DOMAIN_BLOCK_COPY_REUSE_EXT); err != nil {
		return wrap(err, "block copy")
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		info, err := d.GetBlockJobInfo("vda", 0)
		if err != nil {
			return wrap(err, "block copy progress")
		}
		// Ready: every byte is mirrored. The domain is paused, so
		// nothing changes after; cancelling leaves the copy complete.
		if info.End > 0 && info.Cur == info.End {
			break
		}
		select {
		case <-ctx.Done():
			_ = d.BlockJobAbort("vda", 0)
			return ctx.Err()
		case <-tick.C:
		}
	}
	if err := d.BlockJobAbort("vda", 0); err != nil {
		return wrap(err, "finish block copy")
	}
	return nil
}

// runQemuImgInfo runs qemu-img info (JSON) on a file; -U: the file may be
// open elsewhere.
func runQemuImgInfo(ctx context.Context, path string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, "qemu-img", "info", "-U", "--output=json", path).Output()
	if err != nil {
		msg := err.Error()
		if ee, ok := err.(*exec.ExitError); ok && len(ee.Stderr) > 0 {
			msg = string(ee.Stderr)
		}
		return nil, fmt.Errorf("inspecting image %s: %s", path, msg)
	}
	return out, nil
}

// rbdPool returns the definition of pool if it is an rbd pool (nil
// otherwise, and always on the test driver).
func (l *Libvirt) rbdPool(ctx context.Context, pool string) (*rbdPool, error) {
	if l.test {
		return nil, nil
	}
	var rp *rbdPool
	err := l.do(ctx, func(c *libvirt.Connect) error {
		var err error
		rp, err = rbdPoolNamed(c, pool)
		return err
	})
	return rp, err
}

// SweepUnfinishedRBD deletes, at startup, the rbd images a previous run of
// this kvm-hostd left unfinished: partial volumes it was filling, and
// images it was importing into (marked Filling). Only this host's own
// records are followed: shared pools are not swept by name, since another
// host may be filling a partial volume there.
func (l *Libvirt) SweepUnfinishedRBD(ctx context.Context) []string {
	l.memMu.Lock()
	dir := l.stateDir
	l.memMu.Unlock()
	if dir == "" || l.test {
		return nil
	}
	files, _ := filepath.Glob(filepath.Join(dir, "volume-meta", "*.json"))
	var removed []string
	for _, f := range files {
		path, err := url.PathUnescape(strings.TrimSuffix(filepath.Base(f), ".json"))
		if err != nil {
			continue
		}
		m := l.readNetMeta(path)
		if !m.Filling && !strings.HasPrefix(filepath.Base(path), ".partial-") {
			continue
		}
		_ = l.do(ctx, func(c *libvirt.Connect) error {
			v, err := c.LookupStorageVolByPath(path)
			if err != nil {
				if isCode(err, libvirt.ERR_NO_STORAGE_VOL) {
					_ = l.writeNetMeta(path, volMeta{})
				}
				return nil
			}
			defer v.Free()
			if err := v.Delete(0); err != nil {
				l.log.Warn("deleting an unfinished rbd image", "path", path, "err", err)
				return nil
			}
			_ = l.writeNetMeta(path, volMeta{})
			removed = append(removed, path)
			return nil
		})
	}
	return removed
}
