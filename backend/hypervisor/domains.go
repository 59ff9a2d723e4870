package hypervisor

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/kvmfleet/terraform-provider-kvm/backend/service"
	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

const defaultShutdownTimeout = 60 * time.Second

// Resources reports host capacity and what defined domains allocate.
func (l *Libvirt) Resources(ctx context.Context) (service.Resources, error) {
	var r service.Resources
	err := l.do(ctx, func(c *libvirt.Connect) error {
		r = service.Resources{DomainType: l.virtType, Domains: map[string]service.Allocation{}, HugepageVMs: map[string]service.HugepageUse{}}
		if p := l.probed; p != nil {
			r.CPUMode, r.CPUDisabled, r.Probe = p.CPUMode, p.Disable, p.Reason
		}
		ni, err := c.GetNodeInfo()
		if err != nil {
			return wrap(err, "node info")
		}
		r.CPUs = int64(ni.Cpus)
		r.MemoryMiB = int64(ni.Memory / 1024)
		if free, err := c.GetFreeMemory(); err == nil {
			r.FreeMemoryMiB = int64(free / mib)
		}
		if err := l.hostMemoryLayout(c, &r); err != nil {
			return err
		}
		doms, err := c.ListAllDomains(0)
		if err != nil {
			return wrap(err, "list domains")
		}
		for i := range doms {
			info, err := doms[i].GetInfo()
			name, nerr := doms[i].GetName()
			if err == nil && nerr == nil {
				if pages := domainHugepages(&doms[i], r.Hugepages.SizeKiB); pages > 0 {
					r.HugepageVMs[name] = service.HugepageUse{Pages: pages, Running: info.State == libvirt.DOMAIN_RUNNING || info.State == libvirt.DOMAIN_PAUSED || info.State == libvirt.DOMAIN_BLOCKED}
				}
			}
			doms[i].Free()
			if err != nil || nerr != nil {
				continue
			}
			r.Domains[name] = service.Allocation{VCPU: int64(info.NrVirtCpu), MemoryMiB: int64(info.MaxMem / 1024)}
			r.VMCount++
			r.AllocatedVCPU += int64(info.NrVirtCpu)
			r.AllocatedMemoryMiB += int64(info.MaxMem / 1024)
		}
		return nil
	})
	return r, err
}

func stateName(s libvirt.DomainState) string {
	switch s {
	case libvirt.DOMAIN_RUNNING, libvirt.DOMAIN_BLOCKED:
		return api.StateRunning
	case libvirt.DOMAIN_SHUTOFF:
		return api.StateShutoff
	case libvirt.DOMAIN_PAUSED, libvirt.DOMAIN_PMSUSPENDED:
		return api.StatePaused
	case libvirt.DOMAIN_CRASHED:
		return api.StateCrashed
	}
	return api.StateOther
}

// vmOf reads a domain back as an api.VM: the persistent definition is the
// spec (it is what the next boot runs; its currentMemory is the balloon
// target, where the live value is what the guest gave back so far), the
// live one adds tap devices.
func (l *Libvirt) vmOf(c *libvirt.Connect, d *libvirt.Domain) (*api.VM, error) {
	state, _, err := d.GetState()
	if err != nil {
		return nil, err
	}
	x, err := domXML(d, libvirt.DOMAIN_XML_INACTIVE)
	if err != nil {
		return nil, err
	}
	spec, meta := specOf(x, l.pathRef(c))
	active, _ := d.IsActive()
	if active {
		if lx, err := domXML(d, 0); err == nil && lx.Devices != nil {
			ports := map[string]string{}
			for _, ix := range lx.Devices.Interfaces {
				if ix.MAC != nil && ix.Target != nil {
					ports[strings.ToLower(ix.MAC.Address)] = ix.Target.Dev
				}
			}
			for i := range spec.Interfaces {
				spec.Interfaces[i].Port = ports[spec.Interfaces[i].MAC]
			}
			liveDevicesOf(lx, &spec)
		}
	}
	st := stateName(state)
	spec.Running = st == api.StateRunning || st == api.StatePaused
	spec.Autostart, _ = d.GetAutostart()
	return &api.VM{Name: x.Name, UUID: x.UUID, State: st, VMSpec: spec, Owner: meta.Owner, RequestID: meta.RequestID}, nil
}

// pathRef finds the pool/volume of a disk attached out of band.
func (l *Libvirt) pathRef(c *libvirt.Connect) volumeRef {
	return func(path string) (string, string) {
		v, err := c.LookupStorageVolByPath(path)
		if err != nil {
			return "", ""
		}
		defer v.Free()
		p, err := v.LookupPoolByVolume()
		if err != nil {
			return "", ""
		}
		defer p.Free()
		pn, _ := p.GetName()
		vn, _ := v.GetName()
		return pn, vn
	}
}

// withDomain runs fn with the named domain.
func (l *Libvirt) withDomain(ctx context.Context, name string, fn func(c *libvirt.Connect, d *libvirt.Domain) error) error {
	return l.do(ctx, func(c *libvirt.Connect) error {
		d, err := c.LookupDomainByName(name)
		if err != nil {
			return wrap(err, "domain %s", name)
		}
		defer d.Free()
		return fn(c, d)
	})
}

// ListVMs lists every defined domain.
func (l *Libvirt) ListVMs(ctx context.Context) ([]api.VM, error) {
	var out []api.VM
	err := l.do(ctx, func(c *libvirt.Connect) error {
		out = nil
		doms, err := c.ListAllDomains(0)
		if err != nil {
			return wrap(err, "list domains")
		}
		for i := range doms {
			vm, err := l.vmOf(c, &doms[i])
			doms[i].Free()
			if err != nil {
				if isCode(err, libvirt.ERR_NO_DOMAIN) {
					continue // undefined meanwhile
				}
				return wrap(err, "read domain")
			}
			out = append(out, *vm)
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// GetVM reads one domain back.
func (l *Libvirt) GetVM(ctx context.Context, name string) (*api.VM, error) {
	var out *api.VM
	err := l.withDomain(ctx, name, func(c *libvirt.Connect, d *libvirt.Domain) error {
		vm, err := l.vmOf(c, d)
		if err != nil {
			return wrap(err, "read domain %s", name)
		}
		out = vm
		return nil
	})
	return out, err
}

// resolveDisks looks up the volumes a spec attaches.
func (l *Libvirt) resolveDisks(c *libvirt.Connect, disks []api.VMDisk) ([]resolvedDisk, error) {
	out := make([]resolvedDisk, 0, len(disks))
	seen := map[string]bool{}
	for _, d := range disks {
		pool := d.Pool
		if pool == "" {
			pool = "default"
		}
		p, err := c.LookupStoragePoolByName(pool)
		if err != nil {
			return nil, wrap(err, "disk %s/%s: pool", pool, d.Volume)
		}
		v, err := p.LookupStorageVolByName(d.Volume)
		p.Free()
		if err != nil {
			return nil, wrap(err, "disk %s/%s", pool, d.Volume)
		}
		vol, x, err := l.volumeOf(pool, v)
		v.Free()
		if err != nil {
			return nil, wrap(err, "disk %s/%s", pool, d.Volume)
		}
		chain, err := backingChain(c, x)
		if err != nil {
			return nil, wrap(err, "disk %s/%s", pool, d.Volume)
		}
		if seen[vol.Path] {
			return nil, api.Errorf(api.CodeInvalid, "volume %s/%s is attached twice", pool, d.Volume)
		}
		seen[vol.Path] = true
		rd := resolvedDisk{VMDisk: d, Path: vol.Path, Format: vol.Format, IOTune: vol.IOTune, Backing: chain}
		rd.Pool = pool
		if !isFilePath(vol.Path) && !l.test {
			rp, err := rbdPoolNamed(c, pool)
			if err != nil {
				return nil, err
			}
			if rp == nil {
				return nil, api.Errorf(api.CodeUnsupported, "disk %s/%s is neither a file nor an rbd image", pool, d.Volume)
			}
			rd.Network = rp.diskSource(vol.Path)
		}
		if k := vol.Encryption.KeyName(); k != "" {
			// The secret is registered before the domain starts; a host
			// without the key refuses the disk now.
			if err := l.ensureDiskSecret(c, k, pool, d.Volume, vol.Path); err != nil {
				return nil, err
			}
			rd.EncryptionKey = k
		}
		out = append(out, rd)
	}
	return out, nil
}

// maxBackingDepth bounds a linked clone's chain (clones of clones).
const maxBackingDepth = 8

// backingChain is the backing chain of a volume as libvirt's storage pool
// records it (the files kvm-hostd itself created as overlays), outermost
// first. It goes into the domain XML explicitly, ending in an empty
// <backingStore/>, so QEMU never probes an image for a backing file of
// its own choosing.
func backingChain(c *libvirt.Connect, x *libvirtxml.StorageVolume) ([]backingFile, error) {
	var chain []backingFile
	for x != nil && x.BackingStore != nil && x.BackingStore.Path != "" {
		if len(chain) == maxBackingDepth {
			return nil, api.Errorf(api.CodeInvalid, "backing chain is deeper than %d", maxBackingDepth)
		}
		b := backingFile{Path: x.BackingStore.Path, Format: api.FormatRaw}
		if x.BackingStore.Format != nil && x.BackingStore.Format.Type != "" {
			b.Format = x.BackingStore.Format.Type
		}
		chain = append(chain, b)
		v, err := c.LookupStorageVolByPath(b.Path)
		if err != nil {
			// A base that is not a pool volume is not ours to follow.
			return nil, api.Errorf(api.CodeConflict, "backing file %s is not a volume of any storage pool", b.Path)
		}
		x, err = volXML(v)
		v.Free()
		if err != nil {
			return nil, err
		}
	}
	return chain, nil
}

// seedDir picks the directory for a VM's seed ISO: the pool of its first
// disk, else (none, or a pool that is not a directory, such as rbd) the
// "default" pool.
func (l *Libvirt) seedDir(c *libvirt.Connect, spec *api.VMSpec) (string, error) {
	if len(spec.Disks) > 0 && spec.Disks[0].Pool != "" && spec.Disks[0].Pool != "default" {
		if dir, err := poolDir(c, spec.Disks[0].Pool); err == nil {
			return dir, nil
		}
	}
	return poolDir(c, "default")
}

// poolDir is the target directory of a pool.
func poolDir(c *libvirt.Connect, pool string) (string, error) {
	p, err := c.LookupStoragePoolByName(pool)
	if err != nil {
		return "", wrap(err, "pool %s for the cloud-init seed", pool)
	}
	defer p.Free()
	doc, err := p.GetXMLDesc(0)
	if err != nil {
		return "", wrap(err, "pool %s", pool)
	}
	var px libvirtxml.StoragePool
	if err := px.Unmarshal(doc); err != nil || px.Target == nil || px.Target.Path == "" {
		return "", fmt.Errorf("pool %s has no target directory", pool)
	}
	return px.Target.Path, nil
}

// prepareSeed writes the seed ISO when the spec has cloud-init. The test
// driver boots nothing, so there the spec is only kept in metadata.
func (l *Libvirt) prepareSeed(c *libvirt.Connect, name string, spec *api.VMSpec) (string, error) {
	if spec.CloudInit == nil || l.test {
		return "", nil
	}
	dir, err := l.seedDir(c, spec)
	if err != nil {
		return "", err
	}
	return writeSeedISO(dir, name, seedCloudInit(name, spec.CloudInit, spec.Interfaces))
}

func (l *Libvirt) removeSeed(path string) {
	if path == "" || l.test {
		return
	}
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		l.log.Warn("remove seed ISO", "path", path, "err", err)
	}
}

// CreateVM defines a domain from spec and starts it if spec.Running.
func (l *Libvirt) CreateVM(ctx context.Context, name string, spec api.VMSpec, meta service.VMMeta) (*api.VM, error) {
	err := l.do(ctx, func(c *libvirt.Connect) error {
		if d, err := c.LookupDomainByName(name); err == nil {
			d.Free()
			return api.Errorf(api.CodeConflict, "domain %s already exists", name)
		}
		if err := l.checkHostDevices(&spec); err != nil {
			return err
		}
		disks, err := l.resolveDisks(c, spec.Disks)
		if err != nil {
			return err
		}
		// A generated network-config matches NICs by MAC: pick them now.
		if _, static := staticNetworkConfig(spec.Interfaces); static {
			spec.Interfaces = slices.Clone(spec.Interfaces)
			for i := range spec.Interfaces {
				if spec.Interfaces[i].MAC == "" {
					spec.Interfaces[i].MAC = randomMAC()
				}
			}
		}
		if err := l.checkFirmwareCaps(c, &spec); err != nil {
			return err
		}
		seed, err := l.prepareSeed(c, name, &spec)
		if err != nil {
			return err
		}
		x, err := buildDomain(&spec, domainParams{name: name, virtType: l.virtType, disks: disks, seedISO: seed,
			meta: &instanceMeta{Owner: meta.Owner, RequestID: meta.RequestID}, probe: l.probed})
		if err != nil {
			l.removeSeed(seed)
			return err
		}
		doc, err := x.Marshal()
		if err != nil {
			l.removeSeed(seed)
			return err
		}
		// No domain has this name: an NVRAM file under it is stale (a
		// failed migration here, an older kvm-hostd) and must not give
		// the new VM another's variables.
		l.removeNVRAM(x)
		t0 := time.Now()
		d, err := c.DomainDefineXML(doc)
		if err != nil {
			l.removeSeed(seed)
			return wrap(err, "define domain %s", name)
		}
		l.log.Debug("domain defined", "name", name, "took", time.Since(t0))
		defer d.Free()
		fail := func(err error) error {
			// Leave nothing half-made: a retried create starts clean.
			_ = d.Destroy()
			_ = undefine(d)
			l.removeSeed(seed)
			return err
		}
		if spec.Autostart {
			if err := d.SetAutostart(true); err != nil {
				return fail(wrap(err, "autostart %s", name))
			}
		}
		if spec.Running {
			t0 = time.Now()
			if err := d.Create(); err != nil {
				return fail(l.startErr(d, err, name))
			}
			l.log.Debug("domain started", "name", name, "took", time.Since(t0))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return l.GetVM(ctx, name)
}

// undefine removes a domain with everything libvirt keeps for it: its
// NVRAM file and its TPM state (/var/lib/libvirt/swtpm/<uuid>) too.
func undefine(d *libvirt.Domain) error {
	err := d.UndefineFlags(libvirt.DOMAIN_UNDEFINE_SNAPSHOTS_METADATA | libvirt.DOMAIN_UNDEFINE_NVRAM |
		libvirt.DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.DOMAIN_UNDEFINE_CHECKPOINTS_METADATA | libvirt.DOMAIN_UNDEFINE_TPM)
	if err != nil && isCode(err, libvirt.ERR_NO_SUPPORT, libvirt.ERR_INVALID_ARG, libvirt.ERR_ARGUMENT_UNSUPPORTED) {
		err = d.Undefine()
	}
	return err
}

// stopDomain shuts a domain down gracefully (ACPI), powering it off once
// timeout has passed; timeout 0 powers off at once.
func (l *Libvirt) stopDomain(ctx context.Context, d *libvirt.Domain, timeout time.Duration) error {
	active, err := d.IsActive()
	if err != nil {
		return err
	}
	if !active {
		return nil
	}
	if timeout > 0 {
		if err := d.Shutdown(); err == nil {
			deadline := time.Now().Add(timeout)
			for time.Now().Before(deadline) {
				if a, err := d.IsActive(); err == nil && !a {
					return nil
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(200 * time.Millisecond):
				}
			}
		} else {
			l.log.Debug("graceful shutdown refused, powering off", "err", err)
		}
	}
	if err := d.Destroy(); err != nil {
		if a, aerr := d.IsActive(); aerr == nil && !a {
			return nil // it went down meanwhile
		}
		return err
	}
	return nil
}

func shutdownTimeout(spec *api.VMSpec) time.Duration {
	return shutdownTimeoutSec(spec.ShutdownTimeoutSec)
}

// shutdownTimeoutSec converts a VM's shutdown timeout. Specs are validated
// (0..MaxShutdownTimeoutSec) before they get here, but the value is also
// read back from domain metadata, which anyone with libvirt access can
// edit: a value out of range is clamped rather than multiplied into an
// overflowed (negative or tiny) duration.
func shutdownTimeoutSec(sec *int64) time.Duration {
	if sec == nil {
		return defaultShutdownTimeout
	}
	return time.Duration(min(max(*sec, 0), api.MaxShutdownTimeoutSec)) * time.Second
}

// DeleteVM stops and undefines a domain; volumes stay.
func (l *Libvirt) DeleteVM(ctx context.Context, name string, timeout time.Duration) error {
	return l.withDomain(ctx, name, func(c *libvirt.Connect, d *libvirt.Domain) error {
		x, err := domXML(d, libvirt.DOMAIN_XML_INACTIVE)
		if err != nil {
			return wrap(err, "read domain %s", name)
		}
		if err := l.stopDomain(ctx, d, timeout); err != nil {
			return wrap(err, "stop %s", name)
		}
		if err := undefine(d); err != nil {
			return wrap(err, "undefine %s", name)
		}
		l.removeSeed(metaOf(x).SeedISO)
		l.removeSerialLog(x)
		l.removeFirmwareState(x)
		return nil
	})
}

// removeSerialLog deletes a domain's serial log and the copies virtlogd
// rotated (<log>.0, <log>.1, ...), when it has one: after the domain was
// deleted or migrated away (the new host keeps its own).
func (l *Libvirt) removeSerialLog(x *libvirtxml.Domain) {
	if l.test || x == nil || x.Devices == nil {
		return
	}
	for _, s := range x.Devices.Serials {
		if s.Log == nil || s.Log.File != serialLogPath(x.Name) {
			continue
		}
		for i := -1; i < 10; i++ {
			p := s.Log.File
			if i >= 0 {
				p = fmt.Sprintf("%s.%d", p, i)
			}
			if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
				l.log.Warn("remove serial log", "path", p, "err", err)
			}
		}
	}
}

// UpdateVM converges a domain on spec: live where libvirt can (memory
// within the balloon ceiling, description, tags and other metadata, run
// state, autostart), otherwise by redefining it and restarting it once.
func (l *Libvirt) UpdateVM(ctx context.Context, name string, spec api.VMSpec) (bool, error) {
	restarted := false
	err := l.withDomain(ctx, name, func(c *libvirt.Connect, d *libvirt.Domain) error {
		restarted = false
		cur, err := domXML(d, libvirt.DOMAIN_XML_INACTIVE)
		if err != nil {
			return wrap(err, "read domain %s", name)
		}
		oldMeta := metaOf(cur)
		curSpec, _ := specOf(cur, l.pathRef(c))
		active, err := d.IsActive()
		if err != nil {
			return wrap(err, "state of %s", name)
		}
		if err := l.checkHostDevices(&spec); err != nil {
			return err
		}
		disks, err := l.resolveDisks(c, spec.Disks)
		if err != nil {
			return err
		}
		if spec.UUID != "" && !strings.EqualFold(spec.UUID, cur.UUID) {
			return api.Errorf(api.CodeInvalid, "the UUID of %s cannot change", name)
		}
		spec.UUID = cur.UUID
		// Keep the MACs libvirt generated for unchanged interfaces.
		for i := range spec.Interfaces {
			if spec.Interfaces[i].MAC == "" && i < len(curSpec.Interfaces) && curSpec.Interfaces[i].Network == spec.Interfaces[i].Network {
				spec.Interfaces[i].MAC = curSpec.Interfaces[i].MAC
			}
		}
		// NICs being added get their MAC now, so a hot-add can record it
		// in the metadata; libvirt would otherwise pick one at attach time.
		for i := len(curSpec.Interfaces); i < len(spec.Interfaces); i++ {
			if spec.Interfaces[i].MAC == "" {
				spec.Interfaces[i].MAC = randomMAC()
			}
		}
		seed := oldMeta.SeedISO
		if spec.CloudInit != nil && !l.test {
			// Content changes take effect on the next boot (cloud-init
			// reads the seed once per instance-id anyway).
			if seed, err = l.prepareSeed(c, name, &spec); err != nil {
				return err
			}
		}
		if spec.CloudInit == nil {
			seed = ""
		}
		if curSpec.Firmware != orBIOS(spec.Firmware) || curSpec.SecureBoot != spec.SecureBoot || (spec.TPM != nil && curSpec.TPM == nil) {
			if err := l.checkFirmwareCaps(c, &spec); err != nil {
				return err
			}
		}
		// Other firmware, or Secure Boot switched, needs another variable
		// store: the old one is dropped once QEMU is down, and libvirt
		// makes the new one from the matching template at the next start.
		resetNVRAM := curSpec.Firmware != orBIOS(spec.Firmware) || curSpec.SecureBoot != spec.SecureBoot
		m := *oldMeta
		want, err := buildDomain(&spec, domainParams{name: name, virtType: cur.Type, disks: disks, seedISO: seed, meta: &m, probe: l.probed})
		if err != nil {
			return err
		}
		// NICs appended to a running domain are hot-added (the domain has
		// <acpi/>); anything else, or a failed hot-add, takes the restart.
		hotAdded := false
		if active && !l.test && seed == oldMeta.SeedISO && api.NICsOnlyAppended(curSpec, spec) {
			if err := attachNICs(d, want, len(curSpec.Interfaces)); err != nil {
				l.log.Warn("NIC hot-add failed; restarting the domain instead", "vm", name, "error", err)
			} else {
				hotAdded = true
			}
		}
		if !hotAdded && (len(api.HardwareChanges(curSpec, spec)) > 0 || seed != oldMeta.SeedISO) {
			doc, err := mergeDomain(cur, want).Marshal()
			if err != nil {
				return err
			}
			nd, err := c.DomainDefineXML(doc)
			if err != nil {
				return wrap(err, "redefine %s", name)
			}
			nd.Free()
			if oldMeta.SeedISO != "" && seed == "" {
				l.removeSeed(oldMeta.SeedISO)
			}
			if active {
				if err := l.stopDomain(ctx, d, shutdownTimeout(&spec)); err != nil {
					return wrap(err, "stop %s for restart", name)
				}
				active = false
				restarted = spec.Running
			}
			if resetNVRAM {
				l.removeNVRAM(cur)
				l.removeNVRAM(want) // a stale file under the name, from an earlier UEFI life
			}
		} else if err := l.applyLive(d, active, &curSpec, &spec, want); err != nil {
			return err
		} else if err := l.applyGraphicsPassword(c, d, active, want); err != nil {
			return err
		}
		switch {
		case spec.Running && !active:
			if err := d.Create(); err != nil {
				return l.startErr(d, err, name)
			}
		case !spec.Running && active:
			if err := l.stopDomain(ctx, d, shutdownTimeout(&spec)); err != nil {
				return wrap(err, "stop %s", name)
			}
		}
		if auto, err := d.GetAutostart(); err == nil && auto != spec.Autostart {
			if err := d.SetAutostart(spec.Autostart); err != nil {
				return wrap(err, "autostart %s", name)
			}
		}
		return nil
	})
	return restarted, err
}

// applyLive applies the changes that need no restart, to the persistent
// definition and, when running, to the live domain.
func (l *Libvirt) applyLive(d *libvirt.Domain, active bool, cur, spec *api.VMSpec, want *libvirtxml.Domain) error {
	flags := libvirt.DOMAIN_AFFECT_CONFIG
	if active {
		flags |= libvirt.DOMAIN_AFFECT_LIVE
	}
	liveMem := cur.MemoryMiB
	if active {
		if info, err := d.GetInfo(); err == nil {
			liveMem = int64(info.Memory / 1024)
		}
	}
	if spec.MemoryMiB != cur.MemoryMiB {
		if err := d.SetMemoryFlags(uint64(spec.MemoryMiB)*1024, libvirt.DOMAIN_MEM_CONFIG); err != nil {
			return wrap(err, "set memory to %d MiB", spec.MemoryMiB)
		}
	}
	// Separately from CONFIG: the test driver refuses both in one call.
	if active && spec.MemoryMiB != liveMem {
		if err := d.SetMemoryFlags(uint64(spec.MemoryMiB)*1024, libvirt.DOMAIN_MEM_LIVE); err != nil {
			return wrap(err, "set memory to %d MiB", spec.MemoryMiB)
		}
	}
	if err := applyEmulatorPin(d, active, cur, spec); err != nil {
		return err
	}
	if spec.Description != cur.Description {
		if err := d.SetMetadata(libvirt.DOMAIN_METADATA_DESCRIPTION, spec.Description, "", "", flags); err != nil {
			return wrap(err, "set description")
		}
	}
	s, err := marshalMetaBare(metaOf(want))
	if err != nil {
		return err
	}
	if err := d.SetMetadata(libvirt.DOMAIN_METADATA_ELEMENT, s, metaPrefix, metaNS, flags); err != nil {
		return wrap(err, "set metadata")
	}
	return nil
}

// mergeDomain applies the parts of want that we own onto the current
// definition, keeping what libvirt added (machine type, controllers, PCI
// addresses of unchanged devices) so the guest sees stable hardware.
func mergeDomain(cur, want *libvirtxml.Domain) *libvirtxml.Domain {
	n := *cur
	n.Description = want.Description
	n.Metadata = want.Metadata
	n.Memory = want.Memory
	n.CurrentMemory = want.CurrentMemory
	n.VCPU = want.VCPU
	n.CPU = want.CPU
	n.CPUTune = want.CPUTune
	n.MemoryBacking = want.MemoryBacking
	n.NUMATune = want.NUMATune
	n.IOThreads = want.IOThreads // the SCSI controller's, also on a new machine type
	if mergeFirmware(&n, cur, want) {
		// A new machine type: the devices as wanted, addressed by
		// libvirt anew (i440fx addresses and controllers mean nothing
		// on q35 and vice versa); only the OVS interface ids stay.
		dev := *want.Devices
		dev.Interfaces = slices.Clone(want.Devices.Interfaces)
		for i, ix := range dev.Interfaces {
			if ix.MAC == nil {
				continue
			}
			if o := interfaceByMAC(cur, ix.MAC.Address); o != nil {
				dev.Interfaces[i].VirtualPort = keepPort(o.VirtualPort, ix.VirtualPort)
			}
		}
		n.Devices = &dev
		return &n
	}
	dev := libvirtxml.DomainDeviceList{}
	if cur.Devices != nil {
		dev = *cur.Devices
	}
	oldDisk := map[string]libvirtxml.DomainDisk{}
	for _, d := range dev.Disks {
		if d.Target != nil {
			oldDisk[d.Target.Dev+"\x00"+diskPath(&d)] = d
		}
	}
	dev.Disks = nil
	for _, d := range want.Devices.Disks {
		if o, ok := oldDisk[d.Target.Dev+"\x00"+diskPath(&d)]; ok && o.Target.Bus == d.Target.Bus {
			d.Address, d.Alias = o.Address, o.Alias
		}
		dev.Disks = append(dev.Disks, d)
	}
	oldIf := map[string]libvirtxml.DomainInterface{}
	for _, i := range dev.Interfaces {
		if i.MAC != nil {
			oldIf[strings.ToLower(i.MAC.Address)] = i
		}
	}
	dev.Interfaces = nil
	for _, i := range want.Devices.Interfaces {
		if i.MAC != nil {
			if o, ok := oldIf[i.MAC.Address]; ok {
				i.Address, i.Alias, i.VirtualPort = o.Address, o.Alias, keepPort(o.VirtualPort, i.VirtualPort)
			}
		}
		dev.Interfaces = append(dev.Interfaces, i)
	}
	// The agent channel: kept as libvirt completed it (socket path,
	// address) while wanted, added or dropped otherwise; other channels stay.
	dev.Channels = nil
	if cur.Devices != nil {
		for _, c := range cur.Devices.Channels {
			if c.Target == nil || c.Target.VirtIO == nil || c.Target.VirtIO.Name != guestAgentChannel {
				dev.Channels = append(dev.Channels, c)
			}
		}
	}
	if wc := agentChannelOf(want); wc != nil {
		if oc := agentChannelOf(cur); oc != nil {
			dev.Channels = append(dev.Channels, *oc)
		} else {
			dev.Channels = append(dev.Channels, *wc)
		}
	}
	for _, wc := range want.Devices.Controllers {
		found := false
		for _, c := range dev.Controllers {
			if c.Type == wc.Type {
				found = true
			}
		}
		if !found {
			dev.Controllers = append(dev.Controllers, wc)
		}
	}
	dev.Hostdevs = mergePCIHostdevs(dev.Hostdevs, want.Devices.Hostdevs)
	mergeDevices(&n, &dev, want)
	dev.TPMs = mergeTPM(dev.TPMs, want.Devices.TPMs)
	n.Devices = &dev
	return &n
}

// keepPort keeps the OVS interface id libvirt generated for a port.
func keepPort(old, want *libvirtxml.DomainInterfaceVirtualPort) *libvirtxml.DomainInterfaceVirtualPort {
	if old != nil && old.Params != nil && old.Params.OpenVSwitch != nil {
		return old
	}
	return want
}

// attachNICs hot-adds want's interfaces from index on, live and to the
// persistent definition.
func attachNICs(d *libvirt.Domain, want *libvirtxml.Domain, from int) error {
	for i := from; i < len(want.Devices.Interfaces); i++ {
		doc, err := want.Devices.Interfaces[i].Marshal()
		if err != nil {
			return err
		}
		if err := d.AttachDeviceFlags(doc, libvirt.DOMAIN_DEVICE_MODIFY_LIVE|libvirt.DOMAIN_DEVICE_MODIFY_CONFIG); err != nil {
			return wrap(err, "attach interface %d", i)
		}
	}
	return nil
}

// randomMAC returns a locally administered MAC in QEMU's 52:54:00 range.
func randomMAC() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", b[0], b[1], b[2])
}

// StartVM starts a defined domain; one that already runs is left alone.
func (l *Libvirt) StartVM(ctx context.Context, name string) error {
	return l.withDomain(ctx, name, func(c *libvirt.Connect, d *libvirt.Domain) error {
		if active, err := d.IsActive(); err == nil && active {
			return nil
		}
		if err := l.ensureSecretsOf(c, d); err != nil {
			return err
		}
		if err := d.Create(); err != nil {
			return l.startErr(d, err, name)
		}
		return nil
	})
}

// startErr explains a domain that QEMU would not start with what the host
// probe found: which domain types and CPU modes run here decide most such
// failures (a host CPU mode on an MSR-crashing host, kvm without a usable
// /dev/kvm).
func (l *Libvirt) startErr(d *libvirt.Domain, err error, name string) error {
	err = wrap(err, "start %s", name)
	if l.test || l.probed == nil {
		return err
	}
	x, xerr := domXML(d, libvirt.DOMAIN_XML_INACTIVE)
	if xerr != nil {
		x = nil
	}
	note := probeNote(x, l.probed)
	var ae *api.Error
	if errors.As(err, &ae) {
		return &api.Error{Code: ae.Code, Message: ae.Message + "; " + note}
	}
	return fmt.Errorf("%w; %s", err, note)
}

// probeNote says what failed to start (x, nil when unknown) and what the
// probe found.
func probeNote(x *libvirtxml.Domain, p *HostProbe) string {
	what := "this domain"
	if x != nil {
		what = describeCPU(x)
	}
	return fmt.Sprintf("%s failed to start on this host; the host probe found: %s; the default here is %s",
		what, p.Reason, describeDefault(p))
}

// describeCPU names a domain's type and CPU mode as given to libvirt.
func describeCPU(x *libvirtxml.Domain) string {
	s := "domain type " + x.Type
	if x.CPU == nil || x.CPU.Mode == "" || (x.CPU.Mode == "custom" && x.CPU.Model == nil) {
		s += " with cpu mode " + CPUModeQEMU64 + " (no <cpu> mode)"
	} else {
		s += " with cpu mode " + x.CPU.Mode
		var off []string
		for _, f := range x.CPU.Features {
			if f.Policy == "disable" {
				off = append(off, f.Name)
			}
		}
		if len(off) > 0 {
			s += " (" + strings.Join(off, ", ") + " disabled)"
		}
	}
	if asked := metaOf(x).CPUMode; asked != "" && (x.CPU == nil || asked != x.CPU.Mode) {
		s += ", asked for as " + asked
	}
	return s
}

func describeDefault(p *HostProbe) string {
	s := p.DomainType + " with cpu mode " + p.CPUMode
	if len(p.Disable) > 0 {
		s += " (" + strings.Join(p.Disable, ", ") + " disabled)"
	}
	return s
}

// SetInterfaceVLAN changes the access VLAN of the domain's interface with
// the given MAC (0: untagged) without a restart: in the persistent
// definition and, for a running domain, live, where libvirt retags the
// interface's OVS port itself (ovs-vsctl set Port vnetN tag=...).
func (l *Libvirt) SetInterfaceVLAN(ctx context.Context, name, mac string, vlan int64) error {
	if vlan < 0 || vlan > 4094 {
		return api.Errorf(api.CodeInvalid, "vlan %d out of range", vlan)
	}
	return l.withDomain(ctx, name, func(c *libvirt.Connect, d *libvirt.Domain) error {
		cur, err := domXML(d, libvirt.DOMAIN_XML_INACTIVE)
		if err != nil {
			return wrap(err, "read domain %s", name)
		}
		ix := interfaceByMAC(cur, mac)
		if ix == nil {
			return api.Errorf(api.CodeNotFound, "domain %s has no interface with MAC %s", name, mac)
		}
		if l.test {
			// The test driver cannot update devices; its ports are
			// OVSDB rows the service converges, so only the definition
			// changes.
			setVLAN(ix, vlan)
			doc, err := cur.Marshal()
			if err != nil {
				return err
			}
			nd, err := c.DomainDefineXML(doc)
			if err != nil {
				return wrap(err, "redefine %s", name)
			}
			return wrap(nd.Free(), "redefine %s", name)
		}
		if active, err := d.IsActive(); err != nil {
			return wrap(err, "state of %s", name)
		} else if active {
			live, err := domXML(d, 0)
			if err != nil {
				return wrap(err, "read domain %s", name)
			}
			if lx := interfaceByMAC(live, mac); lx != nil {
				if err := updateInterface(d, lx, vlan, libvirt.DOMAIN_DEVICE_MODIFY_LIVE); err != nil {
					return wrap(err, "retag interface %s of %s live", mac, name)
				}
			}
		}
		return wrap(updateInterface(d, ix, vlan, libvirt.DOMAIN_DEVICE_MODIFY_CONFIG), "retag interface %s of %s", mac, name)
	})
}

func interfaceByMAC(x *libvirtxml.Domain, mac string) *libvirtxml.DomainInterface {
	if x.Devices == nil {
		return nil
	}
	for i := range x.Devices.Interfaces {
		if ix := &x.Devices.Interfaces[i]; ix.MAC != nil && strings.EqualFold(ix.MAC.Address, mac) {
			return ix
		}
	}
	return nil
}

func setVLAN(ix *libvirtxml.DomainInterface, vlan int64) {
	ix.VLan = nil
	if vlan > 0 {
		ix.VLan = &libvirtxml.DomainInterfaceVLan{Tags: []libvirtxml.DomainInterfaceVLanTag{{ID: uint(vlan)}}}
	}
}

// updateInterface retags one interface of the live or the persistent
// definition (flags), unless it already carries vlan.
func updateInterface(d *libvirt.Domain, ix *libvirtxml.DomainInterface, vlan int64, flags libvirt.DomainDeviceModifyFlags) error {
	if ix.VLan == nil && vlan == 0 || ix.VLan != nil && len(ix.VLan.Tags) == 1 && int64(ix.VLan.Tags[0].ID) == vlan && ix.VLan.Trunk == "" {
		return nil
	}
	setVLAN(ix, vlan)
	doc, err := ix.Marshal()
	if err != nil {
		return err
	}
	return d.UpdateDeviceFlags(doc, flags)
}
