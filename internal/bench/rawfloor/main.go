// Command rawfloor measures the raw libvirt floor that `make bench` compares
// the provider with: the same libvirt calls the provider's apply and destroy
// end up making (volume create with a qcow2 backing store, define, start;
// destroy, undefine, volume delete), made directly from Go by a few
// goroutines, with no HTTP, no Terraform and no read-back.
//
//	rawfloor -uri qemu:///system -pool /var/lib/kvm-hostd-bench/raw -n 30 -workers 10
//	rawfloor -uri qemu:///system -pool /var/lib/kvm-hostd-bench/raw -clone-bench
//
// -pool is either a directory (a transient dir pool is created there for the
// run and destroyed afterwards) or the name of an existing active pool.
// Every figure is printed as one line "RESULT key value" (seconds, or a
// count), which scripts/bench.sh parses; -json prints one JSON object
// instead. Everything the run creates is named <prefix>-..., and is removed
// at the end, also after a failure.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"
)

const mib = 1024 * 1024

type options struct {
	uri          string
	pool         string
	n            int
	workers      int
	prefix       string
	baseMiB      uint64
	memMiB       uint
	cloneBench   bool
	cloneSamples int
	bigBaseMiB   uint64
	connPerWork  bool
	jsonOut      bool
}

type floor struct {
	opts     options
	conn     *libvirt.Connect
	conns    []*libvirt.Connect // one per worker with -conn-per-worker
	pool     *libvirt.StoragePool
	ownPool  bool
	virtType string

	mu      sync.Mutex
	volumes []string // names created, for cleanup
	domains []string
}

func main() {
	var o options
	flag.StringVar(&o.uri, "uri", "qemu:///system", "libvirt URI")
	flag.StringVar(&o.pool, "pool", "/var/lib/kvm-hostd-bench/raw", "storage pool: a directory (a transient dir pool is made there) or an existing pool's name")
	flag.IntVar(&o.n, "n", 10, "number of VMs (each on a linked clone of one base)")
	flag.IntVar(&o.workers, "workers", 10, "goroutines making the calls")
	flag.StringVar(&o.prefix, "prefix", "rawfloor", "name prefix of every volume and domain made")
	flag.Uint64Var(&o.baseMiB, "base-mib", 64, "size of the qcow2 base volume")
	flag.UintVar(&o.memMiB, "memory-mib", 64, "memory of each VM")
	flag.BoolVar(&o.cloneBench, "clone-bench", false, "instead: time linked-clone creation on a small and a big base")
	flag.IntVar(&o.cloneSamples, "clone-samples", 7, "clones per base for -clone-bench (median reported)")
	flag.Uint64Var(&o.bigBaseMiB, "big-base-mib", 4096, "size of the big (sparse qcow2) base for -clone-bench")
	flag.BoolVar(&o.connPerWork, "conn-per-worker", false, "open one libvirt connection per goroutine (default: one shared connection, as kvm-hostd does)")
	flag.BoolVar(&o.jsonOut, "json", false, "print one JSON object instead of RESULT lines")
	flag.Parse()
	if o.n < 1 || o.workers < 1 {
		fatal(errors.New("-n and -workers must be positive"))
	}

	f := &floor{opts: o}
	if err := f.open(); err != nil {
		fatal(err)
	}
	// Clean up on SIGINT/SIGTERM too (bench.sh's trap sends SIGTERM).
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		f.cleanup()
		os.Exit(130)
	}()

	res := map[string]float64{}
	var err error
	if o.cloneBench {
		err = f.runCloneBench(res)
	} else {
		err = f.runLifecycle(res)
	}
	f.cleanup()
	if err != nil {
		fatal(err)
	}
	f.print(res)
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "rawfloor:", err)
	os.Exit(1)
}

func (f *floor) print(res map[string]float64) {
	res["virt_type_kvm"] = 0
	if f.virtType == "kvm" {
		res["virt_type_kvm"] = 1
	}
	if f.opts.jsonOut {
		b, _ := json.Marshal(res)
		fmt.Println(string(b))
		return
	}
	keys := make([]string, 0, len(res))
	for k := range res {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Printf("RESULT %s %.4f\n", k, res[k])
	}
}

func (f *floor) open() error {
	c, err := libvirt.NewConnect(f.opts.uri)
	if err != nil {
		return fmt.Errorf("connect %s: %w", f.opts.uri, err)
	}
	f.conn = c
	if f.opts.connPerWork {
		for range f.opts.workers {
			wc, err := libvirt.NewConnect(f.opts.uri)
			if err != nil {
				return fmt.Errorf("connect %s: %w", f.opts.uri, err)
			}
			f.conns = append(f.conns, wc)
		}
	}
	// Domain type: kvm when libvirt offers it and /dev/kvm is there, else TCG.
	f.virtType = "qemu"
	if caps, err := c.GetCapabilities(); err == nil && strings.Contains(caps, "<domain type='kvm'") {
		if _, err := os.Stat("/dev/kvm"); err == nil {
			f.virtType = "kvm"
		}
	}
	return f.openPool()
}

func (f *floor) openPool() error {
	if !strings.HasPrefix(f.opts.pool, "/") {
		p, err := f.conn.LookupStoragePoolByName(f.opts.pool)
		if err != nil {
			return fmt.Errorf("pool %s: %w", f.opts.pool, err)
		}
		f.pool = p
		return nil
	}
	dir := filepath.Clean(f.opts.pool)
	if err := mkdirTraversable(dir); err != nil {
		return err
	}
	x := &libvirtxml.StoragePool{Type: "dir", Name: f.opts.prefix + "-pool",
		Target: &libvirtxml.StoragePoolTarget{Path: dir}}
	doc, err := x.Marshal()
	if err != nil {
		return err
	}
	// A pool of that name left by a crashed run: drop it first.
	if old, err := f.conn.LookupStoragePoolByName(x.Name); err == nil {
		_ = old.Destroy()
		_ = old.Undefine()
		old.Free()
	}
	p, err := f.conn.StoragePoolCreateXML(doc, 0) // transient: gone when destroyed
	if err != nil {
		return fmt.Errorf("create pool at %s: %w", dir, err)
	}
	f.pool, f.ownPool = p, true
	return nil
}

// mkdirTraversable: QEMU runs as libvirt-qemu and must reach the images.
func mkdirTraversable(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for d := dir; d != "/" && d != "."; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		if st.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(d, st.Mode().Perm()|0o011); err != nil {
				return err
			}
		}
	}
	return nil
}

func (f *floor) connFor(worker int) *libvirt.Connect {
	if len(f.conns) > 0 {
		return f.conns[worker%len(f.conns)]
	}
	return f.conn
}

func (f *floor) poolFor(c *libvirt.Connect) (*libvirt.StoragePool, func(), error) {
	if c == f.conn {
		return f.pool, func() {}, nil
	}
	name, err := f.pool.GetName()
	if err != nil {
		return nil, nil, err
	}
	p, err := c.LookupStoragePoolByName(name)
	if err != nil {
		return nil, nil, err
	}
	return p, func() { p.Free() }, nil
}

// createBase makes an empty sparse qcow2 volume and returns its path.
func (f *floor) createBase(name string, sizeMiB uint64) (string, error) {
	x := &libvirtxml.StorageVolume{
		Name:       name,
		Capacity:   &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: sizeMiB * mib},
		Allocation: &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: 0},
		Target:     &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: "qcow2"}},
	}
	doc, err := x.Marshal()
	if err != nil {
		return "", err
	}
	f.track(&f.volumes, name)
	v, err := f.pool.StorageVolCreateXML(doc, 0)
	if err != nil {
		return "", fmt.Errorf("create base %s: %w", name, err)
	}
	defer v.Free()
	return v.GetPath()
}

// createClone is the linked clone: a qcow2 overlay with backingStore.
func createClone(p *libvirt.StoragePool, name, basePath string, sizeMiB uint64) (*libvirt.StorageVol, error) {
	x := &libvirtxml.StorageVolume{
		Name:       name,
		Capacity:   &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: sizeMiB * mib},
		Allocation: &libvirtxml.StorageVolumeSize{Unit: "bytes", Value: 0},
		Target:     &libvirtxml.StorageVolumeTarget{Format: &libvirtxml.StorageVolumeTargetFormat{Type: "qcow2"}},
		BackingStore: &libvirtxml.StorageVolumeBackingStore{Path: basePath,
			Format: &libvirtxml.StorageVolumeTargetFormat{Type: "qcow2"}},
	}
	doc, err := x.Marshal()
	if err != nil {
		return nil, err
	}
	v, err := p.StorageVolCreateXML(doc, 0)
	if err != nil {
		return nil, fmt.Errorf("create clone %s: %w", name, err)
	}
	return v, nil
}

func (f *floor) domainXML(name, diskPath string) (string, error) {
	x := &libvirtxml.Domain{
		Type:   f.virtType,
		Name:   name,
		Memory: &libvirtxml.DomainMemory{Value: f.opts.memMiB, Unit: "MiB"},
		VCPU:   &libvirtxml.DomainVCPU{Value: 1},
		OS: &libvirtxml.DomainOS{Type: &libvirtxml.DomainOSType{Type: "hvm", Arch: "x86_64"},
			BootDevices: []libvirtxml.DomainBootDevice{{Dev: "hd"}}},
		Features:   &libvirtxml.DomainFeatureList{ACPI: &libvirtxml.DomainFeature{}},
		OnPoweroff: "destroy", OnReboot: "restart", OnCrash: "destroy",
		Devices: &libvirtxml.DomainDeviceList{
			Disks: []libvirtxml.DomainDisk{{
				Device: "disk",
				Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "qcow2"},
				Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: diskPath}},
				Target: &libvirtxml.DomainDiskTarget{Dev: "vda", Bus: "virtio"},
			}},
		},
	}
	return x.Marshal()
}

func (f *floor) track(list *[]string, name string) {
	f.mu.Lock()
	*list = append(*list, name)
	f.mu.Unlock()
}

// parallel runs fn(i) for i in [0,n) on f.opts.workers goroutines and
// returns the first error.
func (f *floor) parallel(n int, fn func(worker, i int) error) error {
	jobs := make(chan int)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for w := range min(f.opts.workers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				if err := fn(w, i); err != nil {
					errs <- err
				}
			}
		}()
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	close(errs)
	return <-errs // nil when none
}

func (f *floor) runLifecycle(res map[string]float64) error {
	o := f.opts
	basePath, err := f.createBase(o.prefix+"-base", o.baseMiB)
	if err != nil {
		return err
	}
	names := make([]string, o.n)
	for i := range names {
		names[i] = fmt.Sprintf("%s-vm-%03d", o.prefix, i)
	}

	// Create: volume create with backing store, define, start.
	start := time.Now()
	err = f.parallel(o.n, func(w, i int) error {
		c := f.connFor(w)
		p, done, err := f.poolFor(c)
		if err != nil {
			return err
		}
		defer done()
		f.track(&f.volumes, names[i]+"-root")
		v, err := createClone(p, names[i]+"-root", basePath, o.baseMiB)
		if err != nil {
			return err
		}
		path, err := v.GetPath()
		v.Free()
		if err != nil {
			return err
		}
		doc, err := f.domainXML(names[i], path)
		if err != nil {
			return err
		}
		f.track(&f.domains, names[i])
		d, err := c.DomainDefineXML(doc)
		if err != nil {
			return fmt.Errorf("define %s: %w", names[i], err)
		}
		defer d.Free()
		if err := d.Create(); err != nil {
			return fmt.Errorf("start %s: %w", names[i], err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	res["create_s"] = time.Since(start).Seconds()

	// Read everything back: list domains + each one's XML and state, list
	// volumes + each one's XML and info (what a refresh needs at minimum).
	start = time.Now()
	nd, nv, err := f.readBack()
	if err != nil {
		return err
	}
	res["read_s"] = time.Since(start).Seconds()
	if nd != o.n || nv != o.n+1 {
		return fmt.Errorf("read back %d domains and %d volumes, want %d and %d", nd, nv, o.n, o.n+1)
	}

	// Tear down: destroy, undefine, delete the clone.
	start = time.Now()
	err = f.parallel(o.n, func(w, i int) error {
		c := f.connFor(w)
		p, done, err := f.poolFor(c)
		if err != nil {
			return err
		}
		defer done()
		d, err := c.LookupDomainByName(names[i])
		if err != nil {
			return err
		}
		defer d.Free()
		if err := d.Destroy(); err != nil {
			return fmt.Errorf("destroy %s: %w", names[i], err)
		}
		if err := d.Undefine(); err != nil {
			return fmt.Errorf("undefine %s: %w", names[i], err)
		}
		v, err := p.LookupStorageVolByName(names[i] + "-root")
		if err != nil {
			return err
		}
		defer v.Free()
		if err := v.Delete(0); err != nil {
			return fmt.Errorf("delete %s-root: %w", names[i], err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	res["teardown_s"] = time.Since(start).Seconds()
	res["n"] = float64(o.n)
	res["workers"] = float64(o.workers)
	return nil
}

func (f *floor) readBack() (domains, volumes int, err error) {
	doms, err := f.conn.ListAllDomains(0)
	if err != nil {
		return 0, 0, err
	}
	for i := range doms {
		d := &doms[i]
		name, err := d.GetName()
		if err == nil && strings.HasPrefix(name, f.opts.prefix+"-") {
			if _, err := d.GetXMLDesc(0); err != nil {
				return 0, 0, err
			}
			if _, err := d.GetInfo(); err != nil {
				return 0, 0, err
			}
			domains++
		}
		d.Free()
	}
	vols, err := f.pool.ListAllStorageVolumes(0)
	if err != nil {
		return 0, 0, err
	}
	for i := range vols {
		v := &vols[i]
		name, err := v.GetName()
		if err == nil && strings.HasPrefix(name, f.opts.prefix+"-") {
			if _, err := v.GetXMLDesc(0); err != nil {
				return 0, 0, err
			}
			if _, err := v.GetInfo(); err != nil {
				return 0, 0, err
			}
			volumes++
		}
		v.Free()
	}
	return domains, volumes, nil
}

func (f *floor) runCloneBench(res map[string]float64) error {
	o := f.opts
	for _, b := range []struct {
		key  string
		size uint64
	}{{"clone_small_base_s", o.baseMiB}, {"clone_big_base_s", o.bigBaseMiB}} {
		baseName := fmt.Sprintf("%s-cbase-%d", o.prefix, b.size)
		basePath, err := f.createBase(baseName, b.size)
		if err != nil {
			return err
		}
		var ts []float64
		for i := range o.cloneSamples {
			name := fmt.Sprintf("%s-cclone-%d-%d", o.prefix, b.size, i)
			f.track(&f.volumes, name)
			start := time.Now()
			v, err := createClone(f.pool, name, basePath, b.size)
			if err != nil {
				return err
			}
			ts = append(ts, time.Since(start).Seconds())
			_ = v.Delete(0)
			v.Free()
		}
		res[b.key] = median(ts)
		res[strings.TrimSuffix(b.key, "_s")+"_mib"] = float64(b.size)
	}
	return nil
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// cleanup removes every domain and volume this run made (leftovers of a
// failure included), then the transient pool. Best effort.
func (f *floor) cleanup() {
	f.mu.Lock()
	doms := append([]string(nil), f.domains...)
	vols := append([]string(nil), f.volumes...)
	f.domains, f.volumes = nil, nil
	f.mu.Unlock()
	for _, name := range doms {
		d, err := f.conn.LookupDomainByName(name)
		if err != nil {
			continue
		}
		if active, _ := d.IsActive(); active {
			_ = d.Destroy()
		}
		_ = d.Undefine()
		d.Free()
	}
	if f.pool != nil {
		// Clones first, the bases (named first) last.
		for i := len(vols) - 1; i >= 0; i-- {
			if v, err := f.pool.LookupStorageVolByName(vols[i]); err == nil {
				_ = v.Delete(0)
				v.Free()
			}
		}
		if f.ownPool {
			_ = f.pool.Destroy()
			f.ownPool = false
		}
	}
}
