package kvm

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// Two teams apply their own Terraform states onto the same small host at
// the same time. terraform-plugin-testing runs one state at a time, so
// these tests run the terraform CLI directly, twice in parallel, against
// the provider binary (dev_overrides).

// twoStates is two working directories (team a, team b) for one cluster.
type twoStates struct {
	prefix string // of every VM name: unique per run on the shared real stack
	c      *harness.Cluster
	cl     *client.Client
	dirs   [2]*harness.Workdir
	names  [2][]string // the VMs each state declares
}

func newTwoStates(t *testing.T, opts harness.Options, prefix string) *twoStates {
	t.Helper()
	testAccPreCheck(t)
	tf := os.Getenv("TF_ACC_TERRAFORM_PATH")
	if tf == "" {
		t.Skip("needs the terraform CLI: set TF_ACC_TERRAFORM_PATH (scripts/terraform-path.sh)")
	}
	opts.Hosts = []string{"host-a"}
	c := startHosts(t, opts)
	ts := &twoStates{prefix: prefix, c: c, cl: testAccVMClient(t, c, "host-a")}
	parent := t.TempDir()
	for i, team := range []string{"a", "b"} {
		w, err := harness.NewWorkdir(parent, team, tf, "KVM_HOSTS="+c.KVMHosts(), "KVM_TOKEN="+c.Token)
		if err != nil {
			t.Fatal(err)
		}
		ts.dirs[i] = w
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		for _, w := range ts.dirs {
			if out, err := w.Run(ctx, "destroy", "-auto-approve", "-input=false", "-no-color"); err != nil {
				t.Errorf("%v\n%s", err, out)
			}
		}
	})
	return ts
}

// config declares count VMs named "<team>-<i>" with vcpu and memory_mib.
func (ts *twoStates) config(team string, count int, vcpu, memMiB int64) (string, []string) {
	var b strings.Builder
	b.WriteString("terraform {\n  required_providers {\n    kvm = { source = \"kvmfleet/kvm\" }\n  }\n}\nprovider \"kvm\" {}\n")
	var names []string
	for i := range count {
		name := fmt.Sprintf("%s%s-%d", ts.prefix, team, i)
		names = append(names, name)
		fmt.Fprintf(&b, "resource \"kvm_vm\" %q {\n  name = %q\n  host = \"host-a\"\n  vcpu = %d\n  memory_mib = %d\n  shutdown_timeout = 0\n}\n", name, name, vcpu, memMiB)
	}
	return b.String(), names
}

// applyBoth writes each team's config and applies both at once; it returns
// each apply's output and error.
func (ts *twoStates) applyBoth(t *testing.T, configs [2]string) (outs [2]string, errs [2]error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for i, w := range ts.dirs {
		if err := w.WriteConfig(configs[i]); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for i, w := range ts.dirs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], errs[i] = w.Run(ctx, "apply", "-auto-approve", "-input=false", "-no-color", "-parallelism=10")
		}()
	}
	wg.Wait()
	return outs, errs
}

// watchAllocation polls the host's inventory until stop is closed and
// returns the highest allocation it saw and the capacity.
func watchAllocation(t *testing.T, cl *client.Client, stop <-chan struct{}) func() (maxVCPU, maxMem, capVCPU, capMem int64) {
	var mu sync.Mutex
	var mv, mm, cv, cm int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if h, err := cl.Host(context.Background()); err == nil {
				mu.Lock()
				mv, mm = max(mv, h.AllocatedVCPU), max(mm, h.AllocatedMemoryMiB)
				cv, cm = int64(float64(h.CPUs)*h.CPUOvercommit), int64(float64(h.MemoryMiB)*h.MemoryOvercommit)
				mu.Unlock()
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return func() (int64, int64, int64, int64) {
		<-done
		mu.Lock()
		defer mu.Unlock()
		return mv, mm, cv, cm
	}
}

// fullRefusal is a "full" refusal that names the host, as terraform prints
// it (wrapped).
var fullRefusal = regexp.MustCompile(`host\s+host-a\s+is\s+full`)

// TestAccConcurrency_twoStatesCreate: teams a and b each create 4 VMs of 1
// vCPU at once on a host with room for 4 vCPU. Exactly 4 are created, the
// other 4 are refused with 409 "full" naming the host, the host's
// allocation never exceeds its capacity, and every VM in either state
// exists exactly once on the host, with nothing outside the states.
func TestAccConcurrency_twoStatesCreate(t *testing.T) {
	// 16 test-driver CPUs × 0.25 = 4 vCPU; memory is not the limit.
	ts := newTwoStates(t, harness.Options{ExtraArgs: []string{"--cpu-overcommit", "0.25", "--memory-overcommit", "1"}}, "")
	var configs [2]string
	configs[0], ts.names[0] = ts.config("a", 4, 1, 256)
	configs[1], ts.names[1] = ts.config("b", 4, 1, 256)

	stop := make(chan struct{})
	peak := watchAllocation(t, ts.cl, stop)
	start := time.Now()
	outs, errs := ts.applyBoth(t, configs)
	close(stop)
	maxVCPU, maxMem, capVCPU, capMem := peak()
	t.Logf("two applies took %s; peak allocation %d/%d vCPU, %d/%d MiB", time.Since(start).Round(time.Millisecond), maxVCPU, capVCPU, maxMem, capMem)
	if maxVCPU > capVCPU || maxMem > capMem {
		t.Errorf("host overcommitted: peak %d vCPU of %d, %d MiB of %d", maxVCPU, capVCPU, maxMem, capMem)
	}

	refused := 0
	for i := range outs {
		n := len(fullRefusal.FindAllString(outs[i], -1))
		refused += n
		if n > 0 && errs[i] == nil {
			t.Errorf("team %d: apply reported %d refusals but succeeded", i, n)
		}
		if errs[i] != nil && n == 0 {
			t.Errorf("team %d: apply failed without a \"full\" refusal naming host-a:\n%s", i, outs[i])
		}
	}
	inState := ts.checkOnHost(t)
	if inState != 4 || refused != 4 {
		t.Errorf("%d VMs created and %d refused as full, want 4 and 4\n--- a:\n%s\n--- b:\n%s", inState, refused, outs[0], outs[1])
	}
}

// checkOnHost checks that every VM of either state exists exactly once on
// the host and nothing else of ours does; it returns how many are in state.
func (ts *twoStates) checkOnHost(t *testing.T) int {
	t.Helper()
	known := harness.NewKnown()
	for _, w := range ts.dirs {
		out, err := w.Stdout(context.Background(), "show", "-json")
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if err := known.AddStateJSON([]byte(out)); err != nil {
			t.Fatal(err)
		}
	}
	total := len(known.VMs)
	vms, err := testAccVMList(ts.cl)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, vm := range vms {
		seen[vm.Name]++
	}
	for k := range known.VMs {
		if n := seen[strings.TrimPrefix(k, "host-a/")]; n != 1 {
			t.Errorf("VM %s is in a state and %d times on the host", k, n)
		}
	}
	for _, prefix := range []string{ts.prefix + "a-", ts.prefix + "b-"} {
		o, err := harness.FindOrphans(context.Background(), map[string]*client.Client{"host-a": ts.cl}, "default", prefix, known)
		if err != nil {
			t.Fatal(err)
		}
		if !o.Empty() {
			t.Errorf("outside both states: %s", o)
		}
	}
	return total
}

// TestAccConcurrency_twoStatesGrow: teams a and b each hold 2 VMs of
// 512 MiB (2 GiB of a 3 GiB host) and grow all of them to 1 GiB at once.
// Room is left for two grows: exactly two succeed, the others are refused
// as full naming the host, the allocation never exceeds the capacity, and
// every VM's memory on the host is what its state says.
func TestAccConcurrency_twoStatesGrow(t *testing.T) {
	testTwoStatesGrow(t, newTwoStates(t, harness.Options{
		ExtraArgs: []string{"--cpu-overcommit", "1", "--memory-overcommit", "1"},
		Env:       growRaceEnv,
	}, ""))
}

// growRaceEnv holds every grow for 1 s between its admission and its
// change in libvirt, so the four grows overlap there every time instead of
// by chance (without it, the race showed in about one run of three).
var growRaceEnv = harness.DelayEnv("vm.update.admitted", time.Second)

func testTwoStatesGrow(t *testing.T, ts *twoStates) {
	var configs [2]string
	configs[0], ts.names[0] = ts.config("a", 2, 1, 512)
	configs[1], ts.names[1] = ts.config("b", 2, 1, 512)
	if outs, errs := ts.applyBoth(t, configs); errs[0] != nil || errs[1] != nil {
		t.Fatalf("initial applies: %v %v\n%s\n%s", errs[0], errs[1], outs[0], outs[1])
	}
	configs[0], _ = ts.config("a", 2, 1, 1024)
	configs[1], _ = ts.config("b", 2, 1, 1024)

	stop := make(chan struct{})
	peak := watchAllocation(t, ts.cl, stop)
	start := time.Now()
	outs, _ := ts.applyBoth(t, configs)
	close(stop)
	maxVCPU, maxMem, capVCPU, capMem := peak()
	t.Logf("two grows took %s; peak allocation %d/%d vCPU, %d/%d MiB", time.Since(start).Round(time.Millisecond), maxVCPU, capVCPU, maxMem, capMem)
	if maxMem > capMem {
		t.Errorf("host overcommitted by concurrent grows: peak %d MiB of %d", maxMem, capMem)
	}
	refused := len(fullRefusal.FindAllString(outs[0], -1)) + len(fullRefusal.FindAllString(outs[1], -1))

	// Each VM's memory on the host is what its state says.
	grown := 0
	var mismatch []string
	for i, w := range ts.dirs {
		for _, n := range ts.names[i] {
			out, err := w.Run(context.Background(), "state", "show", "-no-color", "kvm_vm."+n)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			m := regexp.MustCompile(`(?m)^\s*memory_mib\s*=\s*(\d+)`).FindStringSubmatch(out)
			vm, err := ts.cl.GetVM(context.Background(), n)
			if err != nil {
				t.Fatal(err)
			}
			if m == nil || m[1] != fmt.Sprint(vm.MemoryMiB) {
				mismatch = append(mismatch, fmt.Sprintf("%s: state %v, host %d MiB", n, m, vm.MemoryMiB))
			}
			if vm.MemoryMiB == 1024 {
				grown++
			}
		}
	}
	sort.Strings(mismatch)
	if len(mismatch) > 0 {
		t.Errorf("state and host disagree: %s", strings.Join(mismatch, "; "))
	}
	if grown != 2 || refused != 2 {
		t.Errorf("%d VMs grown and %d grows refused as full, want 2 and 2\n--- a:\n%s\n--- b:\n%s", grown, refused, outs[0], outs[1])
	}
}
