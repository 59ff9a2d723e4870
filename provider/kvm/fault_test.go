package kvm

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/Shopify/toxiproxy/v2/toxics"
	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// createFault spoils the response to the creates it watches for, once per
// create, after the host has acted on the request: as when a network, a
// load balancer or a slow link fails mid-way. Toxiproxy runs in-process
// between the provider and kvm-hostd; two toxics (createWatchToxic on the
// request stream, createFaultToxic on the response stream) share the armed
// fault through createFaults, keyed by the toxics' "fault" attribute.
type createFault struct {
	mode  string        // "drop", "reset" or "delay"
	delay time.Duration // for "delay"

	mu      sync.Mutex
	pending map[string]*regexp.Regexp // resource type -> its create's request line
	inHost  string                    // the create that reached the host, awaiting its response
	fired   []string                  // resource types whose create response was spoiled
}

var createFaults sync.Map // fault ID -> *createFault

func lookupCreateFault(id string) *createFault {
	if f, ok := createFaults.Load(id); ok {
		return f.(*createFault)
	}
	return nil
}

// createRequests match the request line of each resource type's create.
var createRequests = map[string]*regexp.Regexp{
	"kvm_vm":       regexp.MustCompile(`^PUT /v1/vms/[^/ ]+ HTTP/`),
	"kvm_snapshot": regexp.MustCompile(`^PUT /v1/vms/[^/ ]+/snapshots/[^/ ]+ HTTP/`),
	"kvm_disk":     regexp.MustCompile(`^PUT /v1/pools/[^/ ]+/volumes/[^/ ]+ HTTP/`),
	"kvm_network":  regexp.MustCompile(`^PUT /v1/networks/[^/ ]+ HTTP/`),
}

// createWatchToxic (upstream) notices a watched create going to the host.
type createWatchToxic struct {
	Fault string `json:"fault"`
}

func (x *createWatchToxic) Pipe(stub *toxics.ToxicStub) {
	for {
		select {
		case <-stub.Interrupt:
			return
		case ch := <-stub.Input:
			if ch == nil {
				stub.Close()
				return
			}
			if f := lookupCreateFault(x.Fault); f != nil {
				f.mu.Lock()
				for typ, re := range f.pending {
					if re.Match(ch.Data) {
						delete(f.pending, typ)
						f.inHost = typ
					}
				}
				f.mu.Unlock()
			}
			stub.Output <- ch
		}
	}
}

// createFaultToxic (downstream) spoils the response to that create: the
// connection closes without an answer ("drop", a FIN; "reset", an RST when
// a reset_peer toxic marks the proxy's sockets for it) or the answer comes
// late ("delay").
type createFaultToxic struct {
	Fault string `json:"fault"`
}

func (x *createFaultToxic) Pipe(stub *toxics.ToxicStub) {
	for {
		select {
		case <-stub.Interrupt:
			return
		case ch := <-stub.Input:
			if ch == nil {
				stub.Close()
				return
			}
			f := lookupCreateFault(x.Fault)
			if f != nil && bytes.HasPrefix(ch.Data, []byte("HTTP/1.1 ")) {
				f.mu.Lock()
				typ := f.inHost
				f.inHost = ""
				if typ != "" {
					f.fired = append(f.fired, typ)
				}
				f.mu.Unlock()
				if typ != "" {
					switch f.mode {
					case "drop", "reset":
						stub.Close()
						return
					case "delay":
						select {
						case <-time.After(f.delay):
						case <-stub.Interrupt:
							return
						}
					}
				}
			}
			stub.Output <- ch
		}
	}
}

func init() {
	toxics.Register("kvm_create_watch", new(createWatchToxic))
	toxics.Register("kvm_create_fault", new(createFaultToxic))
}

// startFaultProxy puts toxiproxy in front of a host and returns its address.
// With reset, the proxy's sockets close with an RST instead of a FIN: a
// reset_peer toxic that never fires (toxicity 0) sets SO_LINGER 0 on every
// connection it sees, so the fault toxic's close becomes a reset.
func startFaultProxy(t *testing.T, hostURL, faultID string, reset bool) string {
	t.Helper()
	upstream := strings.TrimPrefix(strings.TrimPrefix(hostURL, "http://"), "https://")
	if _, _, err := net.SplitHostPort(upstream); err != nil {
		t.Fatalf("host URL %s: %v", hostURL, err)
	}
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	proxy := toxiproxy.NewProxy(srv, "kvm-host-"+faultID, "127.0.0.1:0", upstream)
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Stop)
	txs := []string{
		fmt.Sprintf(`{"name":"watch","type":"kvm_create_watch","stream":"upstream","attributes":{"fault":%q}}`, faultID),
		fmt.Sprintf(`{"name":"fault","type":"kvm_create_fault","stream":"downstream","attributes":{"fault":%q}}`, faultID),
	}
	if reset {
		txs = append(txs, `{"name":"rst","type":"reset_peer","stream":"downstream","toxicity":0}`)
	}
	for _, tx := range txs {
		if _, err := proxy.Toxics.AddToxicJson(strings.NewReader(tx)); err != nil {
			t.Fatal(err)
		}
	}
	return proxy.Listen
}

// TestAccFault_createResponse applies a network, a disk, a VM using both
// and a snapshot of it, with the response to each create dropped, reset or
// 5 s late after the host has acted on it: every apply ends with exactly one
// object of each on the host, and a second plan is empty (the test
// framework plans again after every apply and fails on a diff).
func TestAccFault_createResponse(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, ExtraArgs: vmTestHostArgs})
	cl := testAccVMClient(t, c, "host-a")
	for _, fault := range []struct {
		mode  string
		delay time.Duration
	}{
		{mode: "drop"},
		{mode: "reset"},
		{mode: "delay", delay: 5 * time.Second},
	} {
		t.Run(fault.mode, func(t *testing.T) {
			t.Parallel() // one proxy and one set of names per case
			p := "tp" + fault.mode + "-"
			f := &createFault{mode: fault.mode, delay: fault.delay, pending: map[string]*regexp.Regexp{}}
			for typ, re := range createRequests {
				f.pending[typ] = re
			}
			createFaults.Store(fault.mode, f)
			t.Cleanup(func() { createFaults.Delete(fault.mode) })
			listen := startFaultProxy(t, c.Host("host-a").URL, fault.mode, fault.mode == "reset")

			// depends_on makes the creates one at a time, so the response
			// after a create's request is that create's.
			config := fmt.Sprintf(`
provider "kvm" {
  token = %[1]q
  hosts = { "host-a" = { endpoint = "http://%[2]s" } }
}
resource "kvm_network" "n" {
  name = "%[3]snet"
}
resource "kvm_disk" "d" {
  name       = "%[3]sdisk"
  host       = "host-a"
  size_mib   = 16
  depends_on = [kvm_network.n]
}
resource "kvm_vm" "v" {
  name               = "%[3]svm"
  host               = "host-a"
  vcpu               = 1
  memory_mib         = 64
  disks              = [{ disk_id = kvm_disk.d.id }]
  network_interfaces = [{ network = kvm_network.n.name }]
}
resource "kvm_snapshot" "s" {
  vm_id          = kvm_vm.v.id
  name           = "%[3]ssnap"
  include_memory = true # the VM runs: a disk-only snapshot is refused
}
`, c.Token, listen, p)
			start := time.Now()
			resource.Test(t, resource.TestCase{
				ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
				CheckDestroy:             checkNoneNamed(cl, p),
				Steps: []resource.TestStep{{
					Config: config,
					Check: func(s *terraform.State) error {
						f.mu.Lock()
						fired, left := strings.Join(f.fired, ","), len(f.pending)
						f.mu.Unlock()
						if left > 0 || len(f.fired) != len(createRequests) {
							return fmt.Errorf("the fault hit the creates of [%s], want each of the %d types once", fired, len(createRequests))
						}
						return checkExactlyOne(cl, p)
					},
				}},
			})
			t.Logf("%s: %d creates faulted, apply+plan+destroy took %s", fault.mode, len(createRequests), time.Since(start).Round(time.Millisecond))
		})
	}
}

// checkExactlyOne counts, on the host, the network, volume, domain and
// snapshot named with prefix: one of each.
func checkExactlyOne(cl *client.Client, prefix string) error {
	ctx := context.Background()
	count := func(names []string) int {
		n := 0
		for _, name := range names {
			if strings.HasPrefix(name, prefix) {
				n++
			}
		}
		return n
	}
	var nets, vols, vms, snaps []string
	ns, err := cl.ListNetworks(ctx)
	if err != nil {
		return err
	}
	for _, n := range ns {
		nets = append(nets, n.Name)
	}
	vs, err := cl.ListVolumes(ctx, "default")
	if err != nil {
		return err
	}
	for _, v := range vs {
		vols = append(vols, v.Name)
	}
	ds, err := cl.ListVMs(ctx)
	if err != nil {
		return err
	}
	for _, d := range ds {
		vms = append(vms, d.Name)
	}
	ss, err := cl.ListSnapshots(ctx, prefix+"vm")
	if err != nil {
		return err
	}
	for _, s := range ss {
		snaps = append(snaps, s.Name)
	}
	for _, c := range []struct {
		kind  string
		names []string
	}{{"networks", nets}, {"volumes", vols}, {"domains", vms}, {"snapshots", snaps}} {
		if n := count(c.names); n != 1 {
			return fmt.Errorf("%d %s named %s* on the host, want exactly 1 (all: %v)", n, c.kind, prefix, c.names)
		}
	}
	return nil
}

// checkNoneNamed is a CheckDestroy: no network, volume or domain named with
// prefix is left on the host.
func checkNoneNamed(cl *client.Client, prefix string) resource.TestCheckFunc {
	return func(*terraform.State) error {
		o, err := harness.FindOrphans(context.Background(), map[string]*client.Client{"host-a": cl}, "default", prefix, harness.NewKnown())
		if err != nil {
			return err
		}
		if !o.Empty() {
			return fmt.Errorf("left after destroy: %s", o)
		}
		return nil
	}
}
