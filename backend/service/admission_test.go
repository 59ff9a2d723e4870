package service_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// statusRecorder remembers the HTTP status of every response by method and
// path, so the test can tell a 201 Created from a 200 (the client hides it).
type statusRecorder struct {
	next http.RoundTripper
	mu   sync.Mutex
	seen map[string][]int
}

func (r *statusRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.next.RoundTrip(req)
	if err == nil {
		r.mu.Lock()
		k := req.Method + " " + req.URL.Path
		r.seen[k] = append(r.seen[k], resp.StatusCode)
		r.mu.Unlock()
	}
	return resp, err
}

func (r *statusRecorder) statuses(method, path string) []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]int(nil), r.seen[method+" "+path]...)
}

// TestAdmissionConcurrentCreates fires 20 concurrent 512 MiB creates at a
// real kvm-hostd (libvirt's test driver, memory_overcommit 1): exactly the
// VMs that fit are created (201), every other request is refused with 409
// "full" naming the numbers, and the host is never overcommitted. A resize
// beyond capacity is refused the same way.
func TestAdmissionConcurrentCreates(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kvm-hostd process")
	}
	c := harness.Start(t, harness.Options{
		Hosts:     []string{"adm"},
		ExtraArgs: []string{"--memory-overcommit", "1", "--cpu-overcommit", "4"},
	})
	rec := &statusRecorder{next: http.DefaultTransport.(*http.Transport).Clone(), seen: map[string][]int{}}
	cl, err := client.New(client.Options{
		Endpoint: c.Hosts[0].URL, Token: c.Token,
		HTTPClient: &http.Client{Transport: rec},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	before, err := cl.Host(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const n, memMiB = 20, 512
	capMem := int64(float64(before.MemoryMiB) * before.MemoryOvercommit)
	capVCPU := int64(float64(before.CPUs) * before.CPUOvercommit)
	fit := int((capMem - before.AllocatedMemoryMiB) / memMiB)
	t.Logf("host: %d MiB × memory_overcommit %g = %d MiB, %d allocated, %d VMs; %d CPUs × %g = %d vCPU → %d of %d creates fit",
		before.MemoryMiB, before.MemoryOvercommit, capMem, before.AllocatedMemoryMiB, before.VMCount,
		before.CPUs, before.CPUOvercommit, capVCPU, fit, n)
	if before.MemoryOvercommit != 1 {
		t.Fatalf("memory_overcommit %g, want 1", before.MemoryOvercommit)
	}
	if before.MemoryMiB == 3072 && before.AllocatedMemoryMiB == 0 && fit != 6 {
		t.Fatalf("3072 MiB fits %d VMs of %d MiB, want 6", fit, memMiB)
	}
	if fit <= 0 || fit >= n || before.AllocatedVCPU+int64(n) > capVCPU {
		t.Fatalf("test needs memory, not vCPUs, to be the limit between 1 and %d VMs: %+v", n-1, before)
	}

	spec := api.VMSpec{VCPU: 1, MemoryMiB: memMiB, Running: true}
	names := make([]string, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		names[i] = fmt.Sprintf("adm-%02d", i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, errs[i] = cl.PutVM(ctx, names[i], spec)
		}()
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	t.Logf("%d concurrent creates answered in %s", n, time.Since(t0).Round(time.Millisecond))

	var created []string
	full := 0
	for i, err := range errs {
		path := "/v1/vms/" + names[i]
		st := rec.statuses(http.MethodPut, path)
		if len(st) != 1 {
			t.Errorf("%s: %d HTTP attempts %v, want exactly 1 (no retries)", names[i], len(st), st)
			continue
		}
		if err == nil {
			if st[0] != http.StatusCreated {
				t.Errorf("%s: created with status %d, want 201", names[i], st[0])
			}
			created = append(created, names[i])
			continue
		}
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != http.StatusConflict || ae.Code != api.CodeFull {
			t.Errorf("%s: %v (status %d), want 409 %q", names[i], err, client.StatusOf(err), api.CodeFull)
			continue
		}
		full++
		// The message names the request, what is free, and the capacity.
		for _, want := range []string{
			"host adm is full", "VM " + names[i], fmt.Sprintf("needs %d MiB", memMiB),
			fmt.Sprintf("of %d MiB are free", capMem), fmt.Sprintf("%d MiB × memory_overcommit 1", before.MemoryMiB),
		} {
			if !strings.Contains(ae.Message, want) {
				t.Errorf("%s: message %q lacks %q", names[i], ae.Message, want)
			}
		}
		if full == 1 {
			t.Logf("refusal: 409 %s: %s", ae.Code, ae.Message)
		}
	}
	if len(created) != fit || full != n-fit {
		t.Errorf("%d created (201) and %d refused (409 full); want %d and %d", len(created), full, fit, n-fit)
	}

	after, err := cl.Host(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after: allocated %d of %d MiB, %d vCPU, %d VMs", after.AllocatedMemoryMiB, capMem, after.AllocatedVCPU, after.VMCount)
	if after.AllocatedMemoryMiB > capMem {
		t.Errorf("host overcommitted: %d MiB allocated > %d MiB capacity", after.AllocatedMemoryMiB, capMem)
	}
	if want := before.AllocatedMemoryMiB + int64(len(created))*memMiB; after.AllocatedMemoryMiB != want {
		t.Errorf("allocated_memory_mib %d, want %d", after.AllocatedMemoryMiB, want)
	}
	vms, err := cl.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ours := 0
	for _, vm := range vms {
		if strings.HasPrefix(vm.Name, "adm-") {
			ours++
		}
	}
	if ours != len(created) || after.VMCount-before.VMCount != int64(len(created)) {
		t.Errorf("%d adm-* VMs listed, vm_count grew by %d; want %d (the 201s)", ours, after.VMCount-before.VMCount, len(created))
	}
	if len(created) == 0 {
		return
	}

	// A resize that raises memory beyond capacity is refused the same way,
	// and changes nothing.
	vm := created[0]
	free := capMem - after.AllocatedMemoryMiB
	bigger := spec
	bigger.MemoryMiB = memMiB + free + 256
	_, err = cl.UpdateVM(ctx, vm, bigger)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusConflict || ae.Code != api.CodeFull {
		t.Fatalf("PATCH %s to %d MiB: %v, want 409 %q", vm, bigger.MemoryMiB, err, api.CodeFull)
	}
	if want := fmt.Sprintf("needs %d MiB of memory but only %d of %d MiB are free", free+256, free, capMem); !strings.Contains(ae.Message, want) {
		t.Errorf("resize refusal %q lacks %q", ae.Message, want)
	}
	t.Logf("resize refusal: 409 %s: %s", ae.Code, ae.Message)
	got, err := cl.GetVM(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	if got.MemoryMiB != memMiB {
		t.Errorf("refused resize changed %s to %d MiB", vm, got.MemoryMiB)
	}
	if h, err := cl.Host(ctx); err != nil || h.AllocatedMemoryMiB != after.AllocatedMemoryMiB {
		t.Errorf("refused resize changed allocation: %+v, %v", h, err)
	}
}

// TestAdmissionConcurrentGrows grows twelve running 128 MiB VMs to 384 MiB
// at once on a host with 3072 MiB (memory_overcommit 1) where 1536 MiB are
// free: exactly six grows fit. It does so for three rounds (shrinking all
// back in between), so interleavings vary. The admission check and the
// change that makes the new size count must be one step, so the host is
// never overcommitted however the grows interleave.
func TestAdmissionConcurrentGrows(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kvm-hostd process")
	}
	c := harness.Start(t, harness.Options{
		Hosts:     []string{"grow"},
		ExtraArgs: []string{"--memory-overcommit", "1", "--cpu-overcommit", "4"},
	})
	cl, err := client.New(client.Options{Endpoint: c.Hosts[0].URL, Token: c.Token, RetryMax: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	before, err := cl.Host(ctx)
	if err != nil {
		t.Fatal(err)
	}
	capMem := int64(float64(before.MemoryMiB) * before.MemoryOvercommit)
	const n, small, big, rounds = 12, 128, 384, 3
	free := capMem - before.AllocatedMemoryMiB - n*small
	fit := int(free / (big - small))
	if fit <= 0 || fit >= n {
		t.Fatalf("test needs between 1 and %d grows to fit: %+v", n-1, before)
	}
	name := func(i int) string { return fmt.Sprintf("grow-%02d", i) }
	for i := range n {
		if _, err := cl.PutVM(ctx, name(i), api.VMSpec{VCPU: 1, MemoryMiB: small, Running: true}); err != nil {
			t.Fatal(err)
		}
	}
	for round := range rounds {
		errs := make([]error, n)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, errs[i] = cl.UpdateVM(ctx, name(i), api.VMSpec{VCPU: 1, MemoryMiB: big, Running: true})
			}()
		}
		close(start)
		wg.Wait()
		grown, full := 0, 0
		for i, err := range errs {
			switch {
			case err == nil:
				grown++
			case api.IsCode(err, api.CodeFull):
				full++
			default:
				t.Errorf("%s: %v, want success or 409 full", name(i), err)
			}
		}
		after, err := cl.Host(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: %d of %d grows admitted (%d fit), %d refused; allocated %d of %d MiB", round, grown, n, fit, full, after.AllocatedMemoryMiB, capMem)
		if after.AllocatedMemoryMiB > capMem {
			t.Errorf("round %d: host overcommitted: %d MiB allocated > %d MiB capacity", round, after.AllocatedMemoryMiB, capMem)
		}
		if grown != fit || full != n-fit {
			t.Errorf("round %d: %d grows admitted and %d refused, want %d and %d", round, grown, full, fit, n-fit)
		}
		var sum int64
		for i := range n {
			vm, err := cl.GetVM(ctx, name(i))
			if err != nil {
				t.Fatal(err)
			}
			sum += vm.MemoryMiB
			if vm.MemoryMiB != small {
				if _, err := cl.UpdateVM(ctx, name(i), api.VMSpec{VCPU: 1, MemoryMiB: small, Running: true}); err != nil {
					t.Fatal(err)
				}
			}
		}
		if want := int64(n*small + grown*(big-small)); sum != want || after.AllocatedMemoryMiB != before.AllocatedMemoryMiB+want {
			t.Errorf("round %d: VMs hold %d MiB, host allocates %d MiB; want %d", round, sum, after.AllocatedMemoryMiB, want)
		}
	}
}
