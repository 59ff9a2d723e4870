package kvm

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// Refresh reads are coalesced per host. Terraform reads every resource of a
// plan separately; one GET per resource per host makes a plan of thousands
// of resources cost thousands of round trips (each one a libvirt lookup and
// XML parse on the host, queued behind the others). Instead the first Read
// of a kind (VMs, the volumes of a pool, networks) on a host lists them all
// once, concurrent Reads wait for that one list (singleflight), and later
// Reads are answered from it.
//
// Drift detection stays exact:
//   - the snapshot is taken during this plan, so whatever changed out of band
//     before the plan shows in it;
//   - an object missing from a snapshot is read directly (a 404 from that
//     GET is what removes it from state), so a snapshot never makes an
//     object disappear;
//   - any write this process makes to a host (the client counts them)
//     invalidates that host's snapshots, and no snapshot is used while a
//     write is in flight, so a read after a write is always fresh;
//   - a snapshot older than snapshotMaxAge is taken again, so a long-lived
//     provider process (or a plan of many minutes) does not serve old data.
//
// A snapshot that fails (host down, timeout) is not cached: each Read then
// makes its own GET and reports the host as it always has.
const snapshotMaxAge = 5 * time.Second

// hostReads is the read cache of one FleetHost; its zero value is ready.
type hostReads struct {
	mu      sync.Mutex
	entries map[string]*snapshot
}

type snapshot struct {
	gen   uint64
	done  chan struct{}
	taken time.Time
	// The objects by name, as JSON: every Read decodes its own copy, as
	// if it had made the GET itself, so no caller shares (or changes)
	// another's.
	objects map[string][]byte
	err     error
}

// fill records the listed objects by name.
func fill[T any](s *snapshot, list []T, name func(*T) string) error {
	s.objects = make(map[string][]byte, len(list))
	for i := range list {
		b, err := json.Marshal(&list[i])
		if err != nil {
			return err
		}
		s.objects[name(&list[i])] = b
	}
	return nil
}

// lookup decodes the named object of a snapshot into out.
func (s *snapshot) lookup(name string, out any) bool {
	b, ok := s.objects[name]
	return ok && json.Unmarshal(b, out) == nil
}

// snapshotOf returns the current snapshot of key, taking it with fetch if
// there is none (one fetch at a time per key: concurrent callers wait for
// it). ok is false when no snapshot can be used: a write is in flight, or
// taking it failed; the caller then reads directly.
func (h *FleetHost) snapshotOf(ctx context.Context, key string, fetch func(context.Context, *snapshot) error) (*snapshot, bool) {
	gen, writing := h.Client.WriteState()
	if writing {
		return nil, false
	}
	r := &h.reads
	r.mu.Lock()
	s := r.entries[key]
	fresh := s != nil && s.gen == gen
	if fresh {
		select {
		case <-s.done:
			fresh = s.err == nil && time.Since(s.taken) < snapshotMaxAge
		default: // being taken: wait for it
		}
	}
	if !fresh {
		s = &snapshot{gen: gen, done: make(chan struct{})}
		if r.entries == nil {
			r.entries = map[string]*snapshot{}
		}
		r.entries[key] = s
		r.mu.Unlock()
		// The list is shared by every Read waiting on it, so it must not
		// fail because the first caller gives up early; it keeps that
		// caller's deadline (the resource's read timeout).
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		if dl, ok := ctx.Deadline(); ok {
			fctx, cancel = context.WithDeadline(context.WithoutCancel(ctx), dl)
		}
		s.err = fetch(fctx, s)
		cancel()
		s.taken = time.Now()
		close(s.done)
	} else {
		r.mu.Unlock()
	}
	select {
	case <-s.done:
	case <-ctx.Done():
		return nil, false
	}
	if s.err != nil {
		return nil, false
	}
	// A write that started while the list was being read may or may not be
	// in it: only a snapshot read entirely between writes is used.
	if now, writing := h.Client.WriteState(); writing || now != s.gen {
		return nil, false
	}
	return s, true
}

// ReadVM reads one VM for a refresh, from the host's snapshot when it has
// the VM, else directly.
func (h *FleetHost) ReadVM(ctx context.Context, name string) (*api.VM, error) {
	s, ok := h.snapshotOf(ctx, "vms", func(ctx context.Context, s *snapshot) error {
		vms, err := h.Client.ListVMs(ctx)
		if err != nil {
			return err
		}
		return fill(s, vms, func(vm *api.VM) string { return vm.Name })
	})
	var vm api.VM
	if ok && s.lookup(name, &vm) {
		return &vm, nil
	}
	return h.Client.GetVM(ctx, name)
}

// ReadVolume reads one volume for a refresh (as GetVolume: without usage),
// from the host's snapshot of the pool when it has the volume, else
// directly.
func (h *FleetHost) ReadVolume(ctx context.Context, pool, name string) (*api.Volume, error) {
	s, ok := h.snapshotOf(ctx, "volumes/"+pool, func(ctx context.Context, s *snapshot) error {
		vols, err := h.Client.ListVolumes(ctx, pool)
		if err != nil {
			return err
		}
		for i := range vols {
			// GetVolume without usage answers neither of these; a list
			// does. Keep the answers identical.
			vols[i].UsedBy, vols[i].Children = nil, nil
		}
		return fill(s, vols, func(v *api.Volume) string { return v.Name })
	})
	var v api.Volume
	if ok && s.lookup(name, &v) {
		return &v, nil
	}
	return h.Client.GetVolume(ctx, pool, name)
}

// ReadNetwork reads one network on this host for a refresh, from the host's
// snapshot when it has the network, else directly.
func (h *FleetHost) ReadNetwork(ctx context.Context, name string) (*api.Network, error) {
	s, ok := h.snapshotOf(ctx, "networks", func(ctx context.Context, s *snapshot) error {
		nets, err := h.Client.ListNetworks(ctx)
		if err != nil {
			return err
		}
		return fill(s, nets, func(n *api.Network) string { return n.Name })
	})
	var n api.Network
	if ok && s.lookup(name, &n) {
		return &n, nil
	}
	return h.Client.GetNetwork(ctx, name)
}

// PlanInventory is Inventory for plan-time checks of many resources (a
// disk's pool space): one read of the host per plan answers all of them,
// under the same rules as the refresh snapshots (any write of this process
// to the host invalidates it). A host that cannot be read is answered as
// Inventory answers it.
func (h *FleetHost) PlanInventory(ctx context.Context) api.Host {
	s, ok := h.snapshotOf(ctx, "host", func(ctx context.Context, s *snapshot) error {
		inv := h.Inventory(ctx)
		if !inv.Healthy {
			return errUnhealthy
		}
		return fill(s, []api.Host{inv}, func(*api.Host) string { return "" })
	})
	var inv api.Host
	if ok && s.lookup("", &inv) {
		return inv
	}
	return h.Inventory(ctx)
}

// errUnhealthy keeps an unhealthy inventory out of the cache: the next
// check asks again.
var errUnhealthy = errors.New("host unhealthy")
