package realstack

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// TestPoolRoot holds every storage pool the tests create on the system libvirt: the
// "default" pool of real-stack kvm-hostd clusters (internal/harness) and the per-test
// pools of backend/hypervisor. Nothing else uses it, so a pool whose directory is
// under it, its volumes, and a domain whose disks are there, are provably the tests'.
const TestPoolRoot = "/var/lib/kvm-hostd-test"

// Lock files of the tests' shared pool: clusters hold a shared lock on the users
// file while they run; the last to stop (an exclusive lock succeeds) removes it.
// The lock file serialises that check with a cluster taking its reference.
const (
	testPoolLockFile  = "/run/kvm-hostd-test.lock"
	testPoolUsersFile = "/run/kvm-hostd-test.users"
)

// testStore is where the tests keep their storage and how its users coordinate;
// its own tests use another one.
type testStore struct{ root, lockFile, usersFile string }

var defaultStore = testStore{TestPoolRoot, testPoolLockFile, testPoolUsersFile}

// Leftover is something the tests left on a libvirt.
type Leftover struct {
	Kind string // "domain", "pool", "volume" or "file"
	Name string
}

func (l Leftover) String() string { return l.Kind + " " + l.Name }

// TestLeftovers lists the tests' objects on the libvirt at uri: domains using a path
// under TestPoolRoot, pools (and their volumes) there, and files left in it.
func TestLeftovers(ctx context.Context, uri string) ([]Leftover, error) {
	return defaultStore.leftovers(ctx, uri)
}

func (st testStore) leftovers(ctx context.Context, uri string) ([]Leftover, error) {
	doms, pools, err := st.objects(ctx, uri)
	if err != nil {
		return nil, err
	}
	var out []Leftover
	for _, d := range doms {
		out = append(out, Leftover{"domain", d})
	}
	for _, p := range pools {
		out = append(out, Leftover{"pool", p.name + " (" + p.path + ")"})
		if p.active {
			vols, err := virsh(ctx, uri, "vol-list", "--pool", p.name)
			if err != nil {
				return nil, err
			}
			for _, l := range lines(vols) {
				// "NAME  PATH" rows (virsh -q prints no header).
				if f := strings.Fields(l); len(f) > 0 && f[0] != "Name" && !strings.HasPrefix(f[0], "---") {
					out = append(out, Leftover{"volume", p.name + "/" + f[0]})
				}
			}
		}
	}
	entries, err := os.ReadDir(st.root)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("realstack: %w", err)
	}
	for _, e := range entries {
		p := filepath.Join(st.root, e.Name())
		if !e.IsDir() {
			out = append(out, Leftover{"file", p})
			continue
		}
		_ = filepath.WalkDir(p, func(path string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				out = append(out, Leftover{"file", path})
			}
			return nil
		})
	}
	return out, nil
}

// SweepTestLeftovers removes what TestLeftovers finds: it destroys and undefines the
// tests' domains, stops and undefines their pools, and deletes TestPoolRoot's
// contents. It returns what it removed.
func SweepTestLeftovers(ctx context.Context, uri string) ([]Leftover, error) {
	return defaultStore.sweep(ctx, uri)
}

func (st testStore) sweep(ctx context.Context, uri string) ([]Leftover, error) {
	doms, pools, err := st.objects(ctx, uri)
	if err != nil {
		return nil, err
	}
	var removed []Leftover
	var errs []error
	for _, d := range doms {
		_, _ = virsh(ctx, uri, "destroy", d)
		if _, err := virsh(ctx, uri, "undefine", "--managed-save", "--snapshots-metadata", "--checkpoints-metadata", d); err != nil {
			if _, err2 := virsh(ctx, uri, "undefine", d); err2 != nil && domainExists(ctx, uri, d) {
				errs = append(errs, err)
				continue
			}
		}
		removed = append(removed, Leftover{"domain", d})
	}
	for _, p := range pools {
		if p.active {
			if _, err := virsh(ctx, uri, "pool-destroy", p.name); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		if p.persistent {
			if _, err := virsh(ctx, uri, "pool-undefine", p.name); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		removed = append(removed, Leftover{"pool", p.name + " (" + p.path + ")"})
	}
	entries, err := os.ReadDir(st.root)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, e := range entries {
		p := filepath.Join(st.root, e.Name())
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		} else {
			removed = append(removed, Leftover{"file", p})
		}
	}
	return removed, errors.Join(errs...)
}

// UseTestPool registers a user of the tests' storage on the system libvirt (a
// real-stack kvm-hostd cluster, a real backend/hypervisor test) until release.
// release removes everything the tests left there (SweepTestLeftovers) when no other
// user, in any process, remains; crashed users drop their reference with their file
// descriptors.
func UseTestPool(ctx context.Context, uri string) (release func() error, err error) {
	return defaultStore.use(ctx, uri)
}

func (st testStore) use(ctx context.Context, uri string) (release func() error, err error) {
	unlock, err := lockFile(ctx, st.lockFile, syscall.LOCK_EX)
	if err != nil {
		return nil, err
	}
	defer unlock()
	users, err := os.OpenFile(st.usersFile, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("realstack: %w", err)
	}
	if err := flock(ctx, users, syscall.LOCK_SH); err != nil {
		users.Close()
		return nil, err
	}
	return func() error {
		if err := syscall.Flock(int(users.Fd()), syscall.LOCK_UN); err != nil {
			users.Close()
			return fmt.Errorf("realstack: unlock %s: %w", users.Name(), err)
		}
		users.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		removed, _, err := st.sweepUnused(ctx, uri)
		if err != nil {
			return fmt.Errorf("removing the tests' objects (removed %v): %w", removed, err)
		}
		return nil
	}, nil
}

// SweepUnusedTestLeftovers runs SweepTestLeftovers unless a test still uses the
// pool (inUse), e.g. for scripts at the start and end of a run.
func SweepUnusedTestLeftovers(ctx context.Context, uri string) (removed []Leftover, inUse bool, err error) {
	return defaultStore.sweepUnused(ctx, uri)
}

func (st testStore) sweepUnused(ctx context.Context, uri string) (removed []Leftover, inUse bool, err error) {
	unlock, err := lockFile(ctx, st.lockFile, syscall.LOCK_EX)
	if err != nil {
		return nil, false, err
	}
	defer unlock()
	users, err := os.OpenFile(st.usersFile, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, false, fmt.Errorf("realstack: %w", err)
	}
	defer users.Close()
	if syscall.Flock(int(users.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		return nil, true, nil
	}
	removed, err = st.sweep(ctx, uri)
	return removed, false, err
}

// DisableTestPoolAutostart turns off autostart of the tests' pools on the libvirt
// at uri: kvm-hostd marks its pool autostart, which a test pool must not be (a
// libvirtd restart would bring back a pool of a finished run).
func DisableTestPoolAutostart(ctx context.Context, uri string) error {
	return defaultStore.disableAutostart(ctx, uri)
}

func (st testStore) disableAutostart(ctx context.Context, uri string) error {
	_, pools, err := st.objects(ctx, uri)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range pools {
		if p.persistent && p.autostart {
			if _, err := virsh(ctx, uri, "pool-autostart", "--disable", p.name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

type testPool struct {
	name, path                    string
	active, persistent, autostart bool
}

// objects finds the domains and pools on uri that use the store's root.
func (st testStore) objects(ctx context.Context, uri string) (domains []string, pools []testPool, err error) {
	out, err := virsh(ctx, uri, "pool-list", "--all", "--name")
	if err != nil {
		return nil, nil, err
	}
	testPools := map[string]bool{}
	for _, name := range lines(out) {
		doc, err := virsh(ctx, uri, "pool-dumpxml", name)
		if err != nil {
			if !poolExists(ctx, uri, name) {
				continue // removed meanwhile
			}
			return nil, nil, err
		}
		var x struct {
			Target struct {
				Path string `xml:"path"`
			} `xml:"target"`
		}
		if xml.Unmarshal([]byte(doc), &x) != nil || !st.holds(x.Target.Path) {
			continue
		}
		p := testPool{name: name, path: x.Target.Path}
		info, _ := virsh(ctx, uri, "pool-info", name)
		for _, l := range lines(info) {
			k, v, _ := strings.Cut(l, ":")
			v = strings.TrimSpace(v)
			switch strings.TrimSpace(k) {
			case "State":
				p.active = v == "running"
			case "Persistent":
				p.persistent = v == "yes"
			case "Autostart":
				p.autostart = v == "yes"
			}
		}
		pools = append(pools, p)
		testPools[name] = true
	}
	out, err = virsh(ctx, uri, "list", "--all", "--name")
	if err != nil {
		return nil, nil, err
	}
	for _, name := range lines(out) {
		doc, err := virsh(ctx, uri, "dumpxml", name)
		if err != nil {
			if !domainExists(ctx, uri, name) {
				continue
			}
			return nil, nil, err
		}
		var x struct {
			Disks []struct {
				Source struct {
					File string `xml:"file,attr"`
					Pool string `xml:"pool,attr"`
				} `xml:"source"`
			} `xml:"devices>disk"`
		}
		if err := xml.Unmarshal([]byte(doc), &x); err != nil {
			return nil, nil, fmt.Errorf("realstack: domain %s: %w", name, err)
		}
		for _, d := range x.Disks {
			if st.holds(d.Source.File) || testPools[d.Source.Pool] {
				domains = append(domains, name)
				break
			}
		}
	}
	sort.Strings(domains)
	return domains, pools, nil
}

func (st testStore) holds(path string) bool {
	if path == "" {
		return false
	}
	rel, err := filepath.Rel(st.root, filepath.Clean(path))
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

func domainExists(ctx context.Context, uri, name string) bool {
	_, err := virsh(ctx, uri, "domuuid", name)
	return err == nil
}

func poolExists(ctx context.Context, uri, name string) bool {
	_, err := virsh(ctx, uri, "pool-uuid", name)
	return err == nil
}

func virsh(ctx context.Context, uri string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, libvirtProbeTimeout)
	defer cancel()
	return run(ctx, "virsh", append([]string{"-q", "-c", uri}, args...)...)
}

func lines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}
