package kvm

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
)

// fakeVMHost is a minimal kvm-hostd for the VM routes, counting requests by
// route.
type fakeVMHost struct {
	mu    sync.Mutex
	vms   map[string]api.VM
	calls map[string]int
	// listGate, when set, holds every list until it is closed.
	listGate chan struct{}
}

func (f *fakeVMHost) count(route string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[route]
}

func (f *fakeVMHost) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name, one := strings.CutPrefix(r.URL.Path, "/v1/vms/")
	route := r.Method + " /v1/vms"
	if one {
		route += "/{name}"
	}
	f.mu.Lock()
	f.calls[route]++
	gate := f.listGate
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch route {
	case "GET /v1/vms":
		if gate != nil {
			<-gate
		}
		f.mu.Lock()
		l := api.VMList{VMs: []api.VM{}}
		for _, vm := range f.vms {
			l.VMs = append(l.VMs, vm)
		}
		f.mu.Unlock()
		_ = json.NewEncoder(w).Encode(l)
	case "GET /v1/vms/{name}":
		f.mu.Lock()
		vm, ok := f.vms[name]
		f.mu.Unlock()
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			_ = json.NewEncoder(w).Encode(api.Error{Code: api.CodeNotFound, Message: "no VM " + name})
			return
		}
		_ = json.NewEncoder(w).Encode(vm)
	case "PATCH /v1/vms/{name}":
		var spec api.VMSpec
		_ = json.NewDecoder(r.Body).Decode(&spec)
		f.mu.Lock()
		vm := f.vms[name]
		vm.VCPU = spec.VCPU
		f.vms[name] = vm
		f.mu.Unlock()
		_ = json.NewEncoder(w).Encode(vm)
	default:
		w.WriteHeader(http.StatusNotFound)
		_ = json.NewEncoder(w).Encode(api.Error{Code: api.CodeNotFound, Message: route})
	}
}

func newFakeVMHost(t *testing.T, names ...string) (*fakeVMHost, *FleetHost) {
	t.Helper()
	f := &fakeVMHost{vms: map[string]api.VM{}, calls: map[string]int{}}
	for _, n := range names {
		f.vms[n] = api.VM{Name: n, State: api.StateRunning, VMSpec: api.VMSpec{VCPU: 1, MemoryMiB: 64}}
	}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	c, err := client.New(client.Options{Endpoint: srv.URL, RetryMax: 1})
	if err != nil {
		t.Fatal(err)
	}
	return f, &FleetHost{Name: "host-a", Endpoint: srv.URL, Client: c}
}

// Every Read of a plan is answered by one list of the host, however many
// Reads run at once.
func TestReadVMCoalescesConcurrentReads(t *testing.T) {
	names := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	f, h := newFakeVMHost(t, names...)
	f.listGate = make(chan struct{})
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			vm, err := h.ReadVM(ctx, names[i%len(names)])
			if err == nil && vm.Name != names[i%len(names)] {
				err = errNamed(vm.Name)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	// Let the list answer only once every Read is waiting on it.
	for f.count("GET /v1/vms") == 0 {
		time.Sleep(time.Millisecond)
	}
	close(f.listGate)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := f.count("GET /v1/vms"); got != 1 {
		t.Errorf("40 concurrent Reads made %d list calls, want 1", got)
	}
	if got := f.count("GET /v1/vms/{name}"); got != 0 {
		t.Errorf("40 Reads of listed VMs made %d single GETs, want 0", got)
	}
	// And later Reads of the same plan reuse it.
	for _, n := range names {
		if _, err := h.ReadVM(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	if got := f.count("GET /v1/vms"); got != 1 {
		t.Errorf("after more Reads: %d list calls, want 1", got)
	}
}

// A VM the snapshot does not have is read directly: a 404 from the host is
// what says it is gone, never the snapshot alone.
func TestReadVMMissingFromSnapshotIsReadDirectly(t *testing.T) {
	f, h := newFakeVMHost(t, "a")
	ctx := context.Background()
	if _, err := h.ReadVM(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	// Created out of band after the snapshot: still found.
	f.mu.Lock()
	f.vms["late"] = api.VM{Name: "late", VMSpec: api.VMSpec{VCPU: 3}}
	f.mu.Unlock()
	vm, err := h.ReadVM(ctx, "late")
	if err != nil || vm.VCPU != 3 {
		t.Fatalf("ReadVM(late) = %+v, %v; want the VM read directly", vm, err)
	}
	if _, err := h.ReadVM(ctx, "gone"); !isNotFound(err) {
		t.Fatalf("ReadVM(gone) error = %v, want the host's 404", err)
	}
	if got := f.count("GET /v1/vms/{name}"); got != 2 {
		t.Errorf("single GETs = %d, want 2 (late, gone)", got)
	}
}

// A write to the host through this provider invalidates its snapshot: the
// next Read sees what was written, not the list taken before.
func TestReadVMAfterWriteIsFresh(t *testing.T) {
	f, h := newFakeVMHost(t, "a", "b")
	ctx := context.Background()
	if vm, err := h.ReadVM(ctx, "a"); err != nil || vm.VCPU != 1 {
		t.Fatalf("ReadVM(a) = %+v, %v", vm, err)
	}
	if _, err := h.Client.UpdateVM(ctx, "a", api.VMSpec{VCPU: 4, MemoryMiB: 64}); err != nil {
		t.Fatal(err)
	}
	vm, err := h.ReadVM(ctx, "a")
	if err != nil || vm.VCPU != 4 {
		t.Fatalf("ReadVM(a) after the update = %+v, %v; want vcpu 4", vm, err)
	}
	if got := f.count("GET /v1/vms"); got != 2 {
		t.Errorf("list calls = %d, want 2 (one before, one after the write)", got)
	}
}

// What a Read gets is its own: changing it does not change what the next
// Read of the same snapshot gets.
func TestReadVMCopiesAreIndependent(t *testing.T) {
	_, h := newFakeVMHost(t, "a")
	ctx := context.Background()
	vm, err := h.ReadVM(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	vm.VCPU = 99
	again, err := h.ReadVM(ctx, "a")
	if err != nil || again.VCPU != 1 {
		t.Fatalf("second ReadVM = %+v, %v; want vcpu 1", again, err)
	}
}

type errNamed string

func (e errNamed) Error() string { return "got VM " + string(e) }

// Plan-time checks of many disks read the host's inventory once; a write
// makes the next check read it again.
func TestPlanInventoryIsReadOncePerPlan(t *testing.T) {
	var mu sync.Mutex
	calls := 0
	free := int64(100)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if r.Method == http.MethodGet && r.URL.Path == "/v1/host" {
			calls++
			_ = json.NewEncoder(w).Encode(api.Host{Name: "host-a", Healthy: true, Pools: []api.HostPool{{Name: "default", FreeMiB: free}}})
			return
		}
		free -= 10 // any write uses space
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	c, err := client.New(client.Options{Endpoint: srv.URL, RetryMax: 1})
	if err != nil {
		t.Fatal(err)
	}
	h := &FleetHost{Name: "host-a", Endpoint: srv.URL, Client: c}
	ctx := context.Background()
	for range 5 {
		if inv := h.PlanInventory(ctx); !inv.Healthy || inv.Pool("default").FreeMiB != 100 {
			t.Fatalf("PlanInventory = %+v", inv)
		}
	}
	if calls != 1 {
		t.Errorf("5 checks read the host %d times, want 1", calls)
	}
	if err := c.DeleteVolume(ctx, "default", "x"); err != nil {
		t.Fatal(err)
	}
	if inv := h.PlanInventory(ctx); inv.Pool("default").FreeMiB != 90 {
		t.Errorf("after a write: free %d MiB, want 90 (read again)", inv.Pool("default").FreeMiB)
	}
}
