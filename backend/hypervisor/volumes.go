package hypervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

const (
	mib       = 1024 * 1024
	xattrName = "user.kvmhostd.meta"
)

// volMeta is what a volume carries besides what libvirt models.
type volMeta struct {
	SourceURL      string      `json:"source_url,omitempty"`
	SourceChecksum string      `json:"source_checksum,omitempty"`
	IOTune         *api.IOTune `json:"iotune,omitempty"`
	// Written is the length of the last upload (test driver only, where
	// no file records it).
	Written int64 `json:"written,omitempty"`
	// MigratingWith is the UUID of the domain whose migration is copying
	// this file away; see RecoverMigrations.
	MigratingWith string `json:"migrating_with,omitempty"`
	// EncryptionKey names the master key of a LUKS volume (see
	// secrets.go); never the key itself.
	EncryptionKey string `json:"encryption_key,omitempty"`
	// Base names the base volume of an RBD clone (libvirt reports no
	// parent for rbd images; file overlays carry theirs in the image).
	Base string `json:"base,omitempty"`
	// Filling marks an rbd image being imported into (renameRBDVolume):
	// one still marked at startup was cut short, and is deleted.
	Filling bool `json:"filling,omitempty"`
}

func (m volMeta) isZero() bool {
	return m.SourceURL == "" && m.SourceChecksum == "" && m.IOTune.IsZero() && m.Written == 0 && m.MigratingWith == "" && m.EncryptionKey == "" && m.Base == "" && !m.Filling
}

// readMeta reads a volume's extras: the file's extended attribute on real
// pools, so a restart of kvm-hostd loses nothing; memory on the test driver.
func (l *Libvirt) readMeta(path string) volMeta {
	if l.test {
		l.memMu.Lock()
		defer l.memMu.Unlock()
		return l.memMeta[path]
	}
	if !isFilePath(path) {
		return l.readNetMeta(path)
	}
	var m volMeta
	buf := make([]byte, 64*1024)
	n, err := unix.Getxattr(path, xattrName, buf)
	if err != nil {
		return m
	}
	if err := json.Unmarshal(buf[:n], &m); err != nil {
		l.log.Warn("unreadable volume metadata", "path", path, "err", err)
	}
	return m
}

func (l *Libvirt) writeMeta(path string, m volMeta) error {
	if l.test {
		l.memMu.Lock()
		defer l.memMu.Unlock()
		if m.isZero() {
			delete(l.memMeta, path)
		} else {
			l.memMeta[path] = m
		}
		return nil
	}
	if !isFilePath(path) {
		return l.writeNetMeta(path, m)
	}
	if m.isZero() {
		err := unix.Removexattr(path, xattrName)
		if err != nil && !errors.Is(err, unix.ENODATA) {
			return fmt.Errorf("clear metadata of %s: %w", path, err)
		}
		return nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := unix.Setxattr(path, xattrName, b, 0); err != nil {
		return fmt.Errorf("record metadata of %s: %w", path, err)
	}
	return nil
}

func (l *Libvirt) dropMeta(path string) {
	if l.test {
		l.memMu.Lock()
		delete(l.memMeta, path)
		l.memMu.Unlock()
	}
}

// EnsurePool defines, builds, starts and autostarts a dir pool; an
// existing pool of that name is used as it is (test:///default ships one
// named "default").
func (l *Libvirt) EnsurePool(ctx context.Context, pool, dir string) error {
	if !l.test {
		if err := ensurePoolDir(dir); err != nil {
			return err
		}
	}
	return l.do(ctx, func(c *libvirt.Connect) error {
		p, err := c.LookupStoragePoolByName(pool)
		if err != nil && !isCode(err, libvirt.ERR_NO_STORAGE_POOL) {
			return wrap(err, "look up pool %s", pool)
		}
		if err != nil {
			x := &libvirtxml.StoragePool{Type: "dir", Name: pool,
				Target: &libvirtxml.StoragePoolTarget{Path: dir}}
			doc, err := x.Marshal()
			if err != nil {
				return err
			}
			p, err = c.StoragePoolDefineXML(doc, 0)
			if err != nil && l.test && isCode(err, libvirt.ERR_OPERATION_FAILED) {
				// test:///default ships a pool "default-pool" at
				// /default-pool; test pools hold no files, so any other
				// directory name serves.
				x.Target.Path = filepath.Join(dir, pool)
				if doc, err = x.Marshal(); err != nil {
					return err
				}
				p, err = c.StoragePoolDefineXML(doc, 0)
			}
			if err != nil {
				return wrap(err, "define pool %s", pool)
			}
			if err := p.Build(libvirt.STORAGE_POOL_BUILD_NEW); err != nil && !l.test {
				l.log.Debug("pool build", "pool", pool, "err", err)
			}
		}
		defer p.Free()
		if !l.test {
			if doc, err := p.GetXMLDesc(0); err == nil {
				x := &libvirtxml.StoragePool{}
				if x.Unmarshal(doc) == nil && x.Target != nil && filepath.Clean(x.Target.Path) != filepath.Clean(dir) {
					// One libvirt has one pool of a name: an existing
					// "default" (e.g. /var/lib/libvirt/images) wins.
					l.log.Warn("storage pool exists at another directory; using it", "pool", pool, "path", x.Target.Path, "pool_dir", dir)
				}
			}
		}
		active, err := p.IsActive()
		if err != nil {
			return wrap(err, "pool %s state", pool)
		}
		if !active {
			// Its directory may have been removed since: re-create it
			// (a no-op error when it exists).
			_ = p.Build(0)
			if err := p.Create(0); err != nil {
				return wrap(err, "start pool %s", pool)
			}
		}
		if auto, err := p.GetAutostart(); err == nil && !auto {
			if err := p.SetAutostart(true); err != nil {
				return wrap(err, "autostart pool %s", pool)
			}
		}
		return nil
	})
}

// ensurePoolDir creates dir (0755, with any missing parents) and checks
// that QEMU, which runs as libvirt-qemu, can reach it: every existing parent
// must be traversable by others. kvm-hostd never changes the mode of a
// directory it did not create; an operator's 0700 parent is a clear error
// at startup instead of a "Permission denied" at the first VM start.
func ensurePoolDir(dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create pool directory: %w", err)
	}
	for d := dir; ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		if st.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("pool directory %s is not reachable by QEMU (it runs as libvirt-qemu): %s has mode %#o; "+
				"make it traversable (chmod o+x %s) or choose another --pool-dir", dir, d, st.Mode().Perm(), d)
		}
		if d == "/" || d == filepath.Dir(d) {
			return nil
		}
	}
}

// withPool runs fn with the named pool, refreshed so out-of-band files show.
func (l *Libvirt) withPool(ctx context.Context, pool string, refresh bool, fn func(c *libvirt.Connect, p *libvirt.StoragePool) error) error {
	return l.do(ctx, func(c *libvirt.Connect) error {
		p, err := c.LookupStoragePoolByName(pool)
		if err != nil {
			return wrap(err, "pool %s", pool)
		}
		defer p.Free()
		// Other hosts add and delete volumes in a shared pool: only a
		// refresh shows them.
		if (refresh || l.isShared(pool)) && !l.test {
			_ = p.Refresh(0)
		}
		return fn(c, p)
	})
}

func volXML(v *libvirt.StorageVol) (*libvirtxml.StorageVolume, error) {
	doc, err := v.GetXMLDesc(0)
	if err != nil {
		return nil, err
	}
	x := &libvirtxml.StorageVolume{}
	if err := x.Unmarshal(doc); err != nil {
		return nil, err
	}
	return x, nil
}

func sizeBytes(s *libvirtxml.StorageVolumeSize) uint64 {
	if s == nil {
		return 0
	}
	if s.Unit == "" {
		return s.Value // volume sizes default to bytes
	}
	return toBytes(s.Unit, s.Value)
}

// volumeOf reads one volume (without UsedBy/Children).
func (l *Libvirt) volumeOf(pool string, v *libvirt.StorageVol) (*api.Volume, *libvirtxml.StorageVolume, error) {
	x, err := volXML(v)
	if err != nil {
		return nil, nil, err
	}
	out := &api.Volume{Name: x.Name, Pool: pool}
	if x.Target != nil {
		out.Path = x.Target.Path
		if x.Target.Format != nil {
			out.Format = x.Target.Format.Type
		}
	}
	if out.Format == "" {
		out.Format = api.FormatRaw
	}
	out.SizeMiB = int64(sizeBytes(x.Capacity) / mib)
	out.AllocatedMiB = int64((sizeBytes(x.Allocation) + mib - 1) / mib)
	m := l.readMeta(out.Path)
	out.SourceURL, out.SourceChecksum = m.SourceURL, m.SourceChecksum
	if !m.IOTune.IsZero() {
		t := *m.IOTune
		out.IOTune = &t
	}
	if m.EncryptionKey != "" {
		out.Encryption = &api.VolumeEncryption{Key: m.EncryptionKey}
	}
	if x.BackingStore == nil {
		out.BaseVolume = m.Base // an RBD clone's base, by name
	}
	if l.test && m.Written > 0 {
		// The test driver never allocates; report what was uploaded.
		out.AllocatedMiB = (m.Written + mib - 1) / mib
	}
	return out, x, nil
}

// poolVolumes reads every volume of a pool and links bases and children.
func (l *Libvirt) poolVolumes(c *libvirt.Connect, pool string, p *libvirt.StoragePool) ([]api.Volume, error) {
	vols, err := p.ListAllStorageVolumes(0)
	if err != nil {
		return nil, wrap(err, "list volumes of %s", pool)
	}
	out := make([]api.Volume, 0, len(vols))
	backing := map[string]string{} // volume path -> backing path
	for i := range vols {
		v, x, err := l.volumeOf(pool, &vols[i])
		vols[i].Free()
		if err != nil {
			if isCode(err, libvirt.ERR_NO_STORAGE_VOL) {
				continue // deleted meanwhile
			}
			return nil, wrap(err, "read volume in %s", pool)
		}
		if x.BackingStore != nil {
			backing[v.Path] = x.BackingStore.Path
		}
		out = append(out, *v)
	}
	byPath := map[string]string{}
	pathOf := map[string]string{}
	for _, v := range out {
		byPath[v.Path] = v.Name
		pathOf[v.Name] = v.Path
	}
	for _, v := range out {
		if _, ok := backing[v.Path]; !ok && v.BaseVolume != "" && pathOf[v.BaseVolume] != "" {
			backing[v.Path] = pathOf[v.BaseVolume] // an RBD clone
		}
	}
	users, err := l.diskUsers(c)
	if err != nil {
		return nil, err
	}
	for i := range out {
		v := &out[i]
		if b, ok := backing[v.Path]; ok {
			v.BaseVolume = byPath[b]
		}
		for child, b := range backing {
			if b == v.Path {
				v.Children = append(v.Children, byPath[child])
			}
		}
		sort.Strings(v.Children)
		v.UsedBy = users[v.Path]
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// diskUsers maps a file path to the domains whose disks use it.
func (l *Libvirt) diskUsers(c *libvirt.Connect) (map[string][]string, error) {
	doms, err := c.ListAllDomains(0)
	if err != nil {
		return nil, wrap(err, "list domains")
	}
	users := map[string][]string{}
	for i := range doms {
		d := &doms[i]
		x, err := domXML(d, libvirt.DOMAIN_XML_INACTIVE)
		d.Free()
		if err != nil {
			continue
		}
		seen := map[string]bool{}
		for _, disk := range diskList(x) {
			p := diskPath(&disk)
			if p != "" && !seen[p] {
				seen[p] = true
				users[p] = append(users[p], x.Name)
			}
		}
	}
	for _, u := range users {
		sort.Strings(u)
	}
	return users, nil
}

// ListVolumes lists the volumes of a pool.
func (l *Libvirt) ListVolumes(ctx context.Context, pool string) ([]api.Volume, error) {
	var out []api.Volume
	err := l.withPool(ctx, pool, true, func(c *libvirt.Connect, p *libvirt.StoragePool) error {
		var err error
		out, err = l.poolVolumes(c, pool, p)
		return err
	})
	return out, err
}

// GetVolume reads one volume and the name of its base. It looks at that
// volume only (no pool scan, no domain scan), because the provider reads
// every disk on every plan; VolumeUsage answers who uses it. The pool is
// refreshed only when the volume is not found, so a file created out of
// band still shows.
func (l *Libvirt) GetVolume(ctx context.Context, pool, name string) (*api.Volume, error) {
	var out *api.Volume
	err := l.withPool(ctx, pool, false, func(c *libvirt.Connect, p *libvirt.StoragePool) error {
		v, err := p.LookupStorageVolByName(name)
		if err != nil && isCode(err, libvirt.ERR_NO_STORAGE_VOL) && !l.test {
			_ = p.Refresh(0)
			v, err = p.LookupStorageVolByName(name)
		}
		if err != nil {
			return wrap(err, "volume %s/%s", pool, name)
		}
		defer v.Free()
		vol, x, err := l.volumeOf(pool, v)
		if err != nil {
			return wrap(err, "volume %s/%s", pool, name)
		}
		if x.BackingStore != nil && x.BackingStore.Path != "" {
			vol.BaseVolume = l.volumeNameInPool(c, pool, x.BackingStore.Path)
		}
		out = vol
		return nil
	})
	return out, err
}

// volumeNameInPool names the volume at path if it belongs to pool, else "".
func (l *Libvirt) volumeNameInPool(c *libvirt.Connect, pool, path string) string {
	bv, err := c.LookupStorageVolByPath(path)
	if err != nil {
		return ""
	}
	defer bv.Free()
	bp, err := bv.LookupPoolByVolume()
	if err != nil {
		return ""
	}
	defer bp.Free()
	if pn, err := bp.GetName(); err != nil || pn != pool {
		return ""
	}
	n, _ := bv.GetName()
	return n
}

// DiskUsers maps every disk file to the domains using it.
func (l *Libvirt) DiskUsers(ctx context.Context) (map[string][]string, error) {
	var users map[string][]string
	err := l.do(ctx, func(c *libvirt.Connect) error {
		var err error
		users, err = l.diskUsers(c)
		return err
	})
	return users, err
}

// VolumeUsage returns the domains attaching a volume and the volumes backed
// by it; it scans the pool and every domain.
func (l *Libvirt) VolumeUsage(ctx context.Context, pool, name string) (usedBy, children []string, err error) {
	err = l.withPool(ctx, pool, false, func(c *libvirt.Connect, p *libvirt.StoragePool) error {
		all, err := l.poolVolumes(c, pool, p)
		if err != nil {
			return err
		}
		for i := range all {
			if all[i].Name == name {
				usedBy, children = all[i].UsedBy, all[i].Children
				return nil
			}
		}
		return api.Errorf(api.CodeNotFound, "volume %s/%s not found", pool, name)
	})
	return usedBy, children, err
}

// CreateVolume creates an empty volume, or a qcow2 overlay on BaseVolume
// (O(1): only the overlay header is written, the base is never copied).
func (l *Libvirt) CreateVolume(ctx context.Context, pool, name string, spec api.VolumeSpec) (*api.Volume, error) {
	format := spec.Format
	if format == "" {
		format = api.FormatQCOW2
	}
	if format != api.FormatQCOW2 && format != api.FormatRaw {
		return nil, api.Errorf(api.CodeInvalid, "volume format %q: use qcow2 or raw", format)
	}
	if spec.SizeMiB < 0 {
		return nil, api.Errorf(api.CodeInvalid, "volume size must not be negative")
	}
	err := l.withPool(ctx, pool, true, func(c *libvirt.Connect, p *libvirt.StoragePool) error {
		if v, err := p.LookupStorageVolByName(name); err == nil {
			v.Free()
			return api.Errorf(api.CodeConflict, "volume %s/%s already exists", pool, name)
		}
		if !l.test {
			if rp, err := rbdPoolOf(p); err != nil {
				return err
			} else if rp != nil {
				return l.createRBDVolume(p, pool, name, spec)
			}
		}
		capacity := uint64(spec.SizeMiB) * mib
		x := &libvirtxml.StorageVolume{
			Name:     name,
			Capacity: &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: capacity},
			Target:   &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: format}},
		}
		if format == api.FormatQCOW2 || l.test {
			// Sparse: allocate nothing up front.
			x.Allocation = &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: 0}
		}
		if format == api.FormatQCOW2 {
			// qcow2 v3. Without <compat> libvirt (9.0) asks qemu-img for
			// compat=0.10 (v2), which QEMU refuses to grow once it holds an
			// internal snapshot ("Can't resize a v2 image which has
			// snapshots") and which lacks zero clusters.
			x.Target.Compat = "1.1"
		}
		if spec.BaseVolume != "" {
			if format != api.FormatQCOW2 {
				return api.Errorf(api.CodeInvalid, "a linked clone must be qcow2")
			}
			bv, err := p.LookupStorageVolByName(spec.BaseVolume)
			if err != nil {
				return wrap(err, "base volume %s/%s", pool, spec.BaseVolume)
			}
			base, berr := l.volumeOfFree(pool, bv)
			if berr != nil {
				return berr
			}
			if base.Encryption != nil {
				// Each encrypted layer would need its own secret in
				// the domain XML, on every host the clone moves to.
				return api.Errorf(api.CodeInvalid, "base volume %s/%s is encrypted: linked clones of an encrypted volume are not supported", pool, spec.BaseVolume)
			}
			if uint64(base.SizeMiB)*mib > capacity {
				x.Capacity.Value = uint64(base.SizeMiB) * mib
			}
			x.BackingStore = &libvirtxml.StorageVolumeBackingStore{Path: base.Path,
				Format: &libvirtxml.StorageVolumeTargetFormat{Type: base.Format}}
		}
		if x.Capacity.Value == 0 {
			return api.Errorf(api.CodeInvalid, "volume size_mib must be positive")
		}
		keyName := spec.Encryption.KeyName()
		if keyName != "" {
			if format != api.FormatQCOW2 || spec.BaseVolume != "" {
				return api.Errorf(api.CodeInvalid, "an encrypted volume must be a qcow2 without a base volume")
			}
			// libvirt runs qemu-img with the secret the path's usage
			// names: register it before the volume exists.
			path, err := l.poolVolumePath(p, name)
			if err != nil {
				return err
			}
			if err := l.ensureDiskSecret(c, keyName, pool, name, path); err != nil {
				return err
			}
			x.Target.Encryption = &libvirtxml.StorageEncryption{Format: "luks",
				Secret: &libvirtxml.StorageEncryptionSecret{Type: "passphrase", UUID: diskSecretUUID(keyName, pool, name)}}
			if l.test {
				// The test driver neither needs nor knows the secret.
				x.Target.Encryption = nil
			}
		}
		doc, err := x.Marshal()
		if err != nil {
			return err
		}
		v, err := p.StorageVolCreateXML(doc, 0)
		if err != nil {
			return wrap(err, "create volume %s/%s", pool, name)
		}
		defer v.Free()
		return l.recordNewVolume(v, volMeta{SourceURL: spec.SourceURL, SourceChecksum: spec.SourceChecksum, EncryptionKey: keyName}, spec.IOTune)
	})
	if err != nil {
		return nil, err
	}
	return l.GetVolume(ctx, pool, name)
}

func (l *Libvirt) volumeOfFree(pool string, v *libvirt.StorageVol) (*api.Volume, error) {
	defer v.Free()
	out, _, err := l.volumeOf(pool, v)
	if err != nil {
		return nil, wrap(err, "read volume")
	}
	return out, nil
}

// WriteVolume uploads an image into a volume through a libvirt stream, so
// it works the same on a remote libvirt.
func (l *Libvirt) WriteVolume(ctx context.Context, pool, name string, r io.Reader, length int64) error {
	if rp, err := l.rbdPool(ctx, pool); err != nil {
		return err
	} else if rp != nil {
		// libvirt cannot upload into rbd: stage the image; renaming the
		// partial volume imports it (renameRBDVolume).
		if !strings.HasPrefix(name, ".partial-") {
			return api.Errorf(api.CodeUnsupported, "volume %s/%s is in an rbd pool: its contents cannot be replaced", pool, name)
		}
		if err := l.withPool(ctx, pool, false, func(_ *libvirt.Connect, p *libvirt.StoragePool) error {
			v, err := p.LookupStorageVolByName(name)
			if err != nil {
				return wrap(err, "volume %s/%s", pool, name)
			}
			v.Free()
			return nil
		}); err != nil {
			return err
		}
		return l.stageRBDWrite(ctx, name, func(sp, sn string) error { return l.WriteVolume(ctx, sp, sn, r, length) })
	}
	return l.withPool(ctx, pool, false, func(c *libvirt.Connect, p *libvirt.StoragePool) error {
		v, err := p.LookupStorageVolByName(name)
		if err != nil {
			return wrap(err, "volume %s/%s", pool, name)
		}
		defer v.Free()
		path, err := v.GetPath()
		if err != nil {
			return wrap(err, "volume path")
		}
		if l.test {
			// The test driver has no data path: consume and record.
			n, err := io.Copy(io.Discard, r)
			if err != nil {
				return fmt.Errorf("read image: %w", err)
			}
			m := l.readMeta(path)
			m.Written = n
			return l.writeMeta(path, m)
		}
		// Keep the metadata: uploads rewrite the file.
		m := l.readMeta(path)
		st, err := c.NewStream(0)
		if err != nil {
			return wrap(err, "new stream")
		}
		defer st.Free()
		var ln uint64
		if length > 0 {
			ln = uint64(length)
		}
		if err := v.Upload(st, 0, ln, 0); err != nil {
			return wrap(err, "upload to %s/%s", pool, name)
		}
		buf := make([]byte, 1<<20)
		for {
			if err := ctx.Err(); err != nil {
				_ = st.Abort()
				return err
			}
			n, rerr := r.Read(buf)
			for off := 0; off < n; {
				w, err := st.Send(buf[off:n])
				if err != nil {
					_ = st.Abort()
					return wrap(err, "stream to %s/%s", pool, name)
				}
				off += w
			}
			if rerr == io.EOF {
				break
			}
			if rerr != nil {
				_ = st.Abort()
				return fmt.Errorf("read image: %w", rerr)
			}
		}
		if err := st.Finish(); err != nil {
			return wrap(err, "finish upload to %s/%s", pool, name)
		}
		_ = p.Refresh(0)
		return l.writeMeta(path, m)
	})
}

// ReadVolume streams a volume's contents to w through a libvirt stream
// (StorageVolDownload), so it works the same on a remote libvirt. The test
// driver holds no data: it writes as many zero bytes as were last uploaded.
func (l *Libvirt) ReadVolume(ctx context.Context, pool, name string, w io.Writer) (int64, error) {
	if rp, err := l.rbdPool(ctx, pool); err != nil {
		return 0, err
	} else if rp != nil {
		return 0, api.Errorf(api.CodeUnsupported, "volume %s/%s is in an rbd pool, which libvirt cannot read out; every host serving the pool sees it", pool, name)
	}
	var total int64
	err := l.withPool(ctx, pool, false, func(c *libvirt.Connect, p *libvirt.StoragePool) error {
		v, err := p.LookupStorageVolByName(name)
		if err != nil {
			return wrap(err, "volume %s/%s", pool, name)
		}
		defer v.Free()
		if l.test {
			path, err := v.GetPath()
			if err != nil {
				return wrap(err, "volume path")
			}
			n, err := io.CopyN(w, zeroReader{}, l.readMeta(path).Written)
			total = n
			return err
		}
		st, err := c.NewStream(0)
		if err != nil {
			return wrap(err, "new stream")
		}
		defer st.Free()
		if err := v.Download(st, 0, 0, 0); err != nil {
			return wrap(err, "download from %s/%s", pool, name)
		}
		buf := make([]byte, 1<<20)
		for {
			if err := ctx.Err(); err != nil {
				_ = st.Abort()
				return err
			}
			n, rerr := st.Recv(buf)
			if n > 0 {
				if _, err := w.Write(buf[:n]); err != nil {
					_ = st.Abort()
					return fmt.Errorf("sending volume %s/%s: %w", pool, name, err)
				}
				total += int64(n)
			}
			if rerr == io.EOF {
				break
			}
			if rerr != nil {
				_ = st.Abort()
				return wrap(rerr, "stream from %s/%s", pool, name)
			}
		}
		if err := st.Finish(); err != nil {
			return wrap(err, "finish download from %s/%s", pool, name)
		}
		return nil
	})
	return total, err
}

type zeroReader struct{}

func (zeroReader) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}

// attachedDisk is a disk of a domain using a given path.
type attachedDisk struct {
	dom    string
	target string
	active bool
}

// attachments lists the domains (and their disk targets) using path.
func (l *Libvirt) attachments(c *libvirt.Connect, path string) ([]attachedDisk, error) {
	doms, err := c.ListAllDomains(0)
	if err != nil {
		return nil, wrap(err, "list domains")
	}
	var out []attachedDisk
	for i := range doms {
		d := &doms[i]
		active, _ := d.IsActive()
		x, err := domXML(d, 0)
		d.Free()
		if err != nil {
			continue
		}
		for _, disk := range diskList(x) {
			if diskPath(&disk) == path && disk.Target != nil {
				out = append(out, attachedDisk{dom: x.Name, target: disk.Target.Dev, active: active})
			}
		}
	}
	return out, nil
}

// ResizeVolume grows a volume; through the running domain when attached,
// so the guest sees the new size at once.
func (l *Libvirt) ResizeVolume(ctx context.Context, pool, name string, sizeMiB int64) error {
	return l.withPool(ctx, pool, true, func(c *libvirt.Connect, p *libvirt.StoragePool) error {
		v, err := p.LookupStorageVolByName(name)
		if err != nil {
			return wrap(err, "volume %s/%s", pool, name)
		}
		defer v.Free()
		cur, x, err := l.volumeOf(pool, v)
		if err != nil {
			return wrap(err, "read volume %s/%s", pool, name)
		}
		switch {
		case sizeMiB < cur.SizeMiB:
			return api.Errorf(api.CodeInvalid, "volume %s/%s is %d MiB; shrinking to %d MiB is not supported", pool, name, cur.SizeMiB, sizeMiB)
		case sizeMiB == cur.SizeMiB:
			return nil
		}
		size := uint64(sizeMiB) * mib
		if l.test {
			return l.testResize(p, x, size)
		}
		att, err := l.attachments(c, cur.Path)
		if err != nil {
			return err
		}
		for _, a := range att {
			if !a.active {
				continue
			}
			d, err := c.LookupDomainByName(a.dom)
			if err != nil {
				return wrap(err, "domain %s", a.dom)
			}
			err = d.BlockResize(a.target, size, libvirt.DOMAIN_BLOCK_RESIZE_BYTES)
			d.Free()
			if err != nil {
				return wrap(err, "online resize of %s on %s", a.target, a.dom)
			}
			return nil
		}
		if err := v.Resize(size, 0); err != nil {
			return wrap(err, "resize volume %s/%s", pool, name)
		}
		return nil
	})
}

// testResize emulates a resize on the test driver (which has none) by
// re-creating the volume definition with the new capacity: test volumes
// hold no data, and path, format and backing store stay the same.
func (l *Libvirt) testResize(p *libvirt.StoragePool, x *libvirtxml.StorageVolume, size uint64) error {
	v, err := p.LookupStorageVolByName(x.Name)
	if err != nil {
		return wrap(err, "volume %s", x.Name)
	}
	defer v.Free()
	if err := v.Delete(0); err != nil {
		return wrap(err, "resize volume %s", x.Name)
	}
	nx := &libvirtxml.StorageVolume{Name: x.Name,
		Capacity:   &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: size},
		Allocation: x.Allocation, BackingStore: x.BackingStore}
	if x.Target != nil {
		nx.Target = &libvirtxml.StorageVolumeTarget{Format: x.Target.Format}
	}
	doc, err := nx.Marshal()
	if err != nil {
		return err
	}
	nv, err := p.StorageVolCreateXML(doc, 0)
	if err != nil {
		return wrap(err, "resize volume %s", x.Name)
	}
	nv.Free()
	return nil
}

// SetVolumeIOTune records the limits and applies them to attaching domains.
func (l *Libvirt) SetVolumeIOTune(ctx context.Context, pool, name string, t *api.IOTune) error {
	return l.withPool(ctx, pool, false, func(c *libvirt.Connect, p *libvirt.StoragePool) error {
		v, err := p.LookupStorageVolByName(name)
		if err != nil {
			return wrap(err, "volume %s/%s", pool, name)
		}
		path, err := v.GetPath()
		v.Free()
		if err != nil {
			return wrap(err, "volume path")
		}
		m := l.readMeta(path)
		m.IOTune = nil
		if !t.IsZero() {
			tt := *t
			m.IOTune = &tt
		}
		if err := l.writeMeta(path, m); err != nil {
			return err
		}
		if l.test {
			return nil // no block tuning on the test driver; recorded only
		}
		att, err := l.attachments(c, path)
		if err != nil {
			return err
		}
		for _, a := range att {
			if err := applyIOTune(c, a, t); err != nil {
				return err
			}
		}
		return nil
	})
}

func applyIOTune(c *libvirt.Connect, a attachedDisk, t *api.IOTune) error {
	d, err := c.LookupDomainByName(a.dom)
	if err != nil {
		return wrap(err, "domain %s", a.dom)
	}
	defer d.Free()
	if t == nil {
		t = &api.IOTune{}
	}
	params := &libvirt.DomainBlockIoTuneParameters{
		ReadBytesSecSet: true, ReadBytesSec: uint64(t.ReadBytesSec),
		WriteBytesSecSet: true, WriteBytesSec: uint64(t.WriteBytesSec),
		ReadIopsSecSet: true, ReadIopsSec: uint64(t.ReadIOPSSec),
		WriteIopsSecSet: true, WriteIopsSec: uint64(t.WriteIOPSSec),
		TotalBytesSecSet: true, TotalIopsSecSet: true,
	}
	flags := libvirt.DOMAIN_AFFECT_CONFIG
	if a.active {
		flags |= libvirt.DOMAIN_AFFECT_LIVE
	}
	if err := d.SetBlockIoTune(a.target, params, flags); err != nil {
		return wrap(err, "set I/O limits of %s on %s", a.target, a.dom)
	}
	return nil
}

// DeleteVolume deletes a volume (the service checked it is unused).
func (l *Libvirt) DeleteVolume(ctx context.Context, pool, name string) error {
	return l.withPool(ctx, pool, false, func(c *libvirt.Connect, p *libvirt.StoragePool) error {
		v, err := p.LookupStorageVolByName(name)
		if err != nil {
			return wrap(err, "volume %s/%s", pool, name)
		}
		defer v.Free()
		path, _ := v.GetPath()
		keyName := l.readMeta(path).EncryptionKey
		var flags libvirt.StorageVolDeleteFlags
		if !isFilePath(path) && !l.test {
			if rp, _ := rbdPoolOf(p); rp != nil {
				// The base of RBD clones carries libvirt's protected
				// snapshots; they go with it (Ceph refuses while a
				// clone still depends on one).
				flags = libvirt.STORAGE_VOL_DELETE_WITH_SNAPSHOTS
				l.dropStaged(c, name)
			}
		}
		if err := v.Delete(flags); err != nil {
			return wrap(err, "delete volume %s/%s", pool, name)
		}
		if !isFilePath(path) && !l.test {
			_ = l.writeMeta(path, volMeta{})
		}
		l.dropMeta(path)
		l.dropDiskSecret(c, keyName, pool, name)
		return nil
	})
}

// RenameVolume renames a volume within its pool: the file is renamed in
// place (no copy; atomic, and refused if the new name exists), so its
// extended-attribute metadata moves with it. libvirt has no volume rename,
// so the pool is refreshed to pick the new name up. The test driver, which
// holds no data, re-creates the definition under the new name.
func (l *Libvirt) RenameVolume(ctx context.Context, pool, from, to string) error {
	return l.withPool(ctx, pool, false, func(c *libvirt.Connect, p *libvirt.StoragePool) error {
		if v, err := p.LookupStorageVolByName(to); err == nil {
			v.Free()
			return api.Errorf(api.CodeConflict, "volume %s/%s already exists", pool, to)
		}
		v, err := p.LookupStorageVolByName(from)
		if err != nil {
			return wrap(err, "volume %s/%s", pool, from)
		}
		defer v.Free()
		path, err := v.GetPath()
		if err != nil {
			return wrap(err, "volume path")
		}
		if l.test {
			return l.testRename(p, v, path, to)
		}
		if !isFilePath(path) {
			rp, err := rbdPoolOf(p)
			if err != nil {
				return err
			}
			if rp != nil {
				return l.renameRBDVolume(ctx, c, p, rp, pool, from, to)
			}
		}
		newPath := filepath.Join(filepath.Dir(path), to)
		if err := unix.Renameat2(unix.AT_FDCWD, path, unix.AT_FDCWD, newPath, unix.RENAME_NOREPLACE); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return api.Errorf(api.CodeConflict, "volume %s/%s already exists", pool, to)
			}
			return fmt.Errorf("rename volume %s/%s to %s: %w", pool, from, to, err)
		}
		if err := p.Refresh(0); err != nil {
			return wrap(err, "refresh pool %s after renaming %s to %s", pool, from, to)
		}
		return nil
	})
}

func (l *Libvirt) testRename(p *libvirt.StoragePool, v *libvirt.StorageVol, path, to string) error {
	x, err := volXML(v)
	if err != nil {
		return wrap(err, "read volume %s", path)
	}
	nx := &libvirtxml.StorageVolume{Name: to, Capacity: x.Capacity, Allocation: x.Allocation, BackingStore: x.BackingStore}
	if x.Target != nil {
		nx.Target = &libvirtxml.StorageVolumeTarget{Format: x.Target.Format}
	}
	doc, err := nx.Marshal()
	if err != nil {
		return err
	}
	nv, err := p.StorageVolCreateXML(doc, 0)
	if err != nil {
		return wrap(err, "rename volume to %s", to)
	}
	defer nv.Free()
	newPath, err := nv.GetPath()
	if err != nil {
		return wrap(err, "volume path")
	}
	if err := l.writeMeta(newPath, l.readMeta(path)); err != nil {
		return err
	}
	if err := v.Delete(0); err != nil {
		return wrap(err, "rename volume to %s", to)
	}
	l.dropMeta(path)
	return nil
}

// recordNewVolume writes what libvirt does not keep of a volume just created
// (its source, base, key name, I/O limits); a volume whose record cannot be
// written is deleted again, so no half-described volume is left.
func (l *Libvirt) recordNewVolume(v *libvirt.StorageVol, m volMeta, tune *api.IOTune) error {
	path, err := v.GetPath()
	if err != nil {
		return wrap(err, "volume path")
	}
	if !tune.IsZero() {
		t := *tune
		m.IOTune = &t
	}
	if err := l.writeMeta(path, m); err != nil {
		_ = v.Delete(0)
		return err
	}
	return nil
}
