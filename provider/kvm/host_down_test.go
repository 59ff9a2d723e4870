package kvm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	fwresource "github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/tfsdk"
	"github.com/hashicorp/terraform-plugin-go/tftypes"
	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// hostDownObject is one row of TestAccHostDown_everyType: a resource type
// with objects on each host, and what a plan does to them while host-b is
// down.
type hostDownObject struct {
	typ string
	// hcl renders the objects; changed makes a change to the host-a ones
	// (only where the type has an in-place change that needs no restart).
	hcl func(changed bool) string
	// onB are addresses of objects on host-b: no change is planned.
	onB []string
	// onA are addresses of objects on host-a: updated when the row has a
	// change, else no change.
	onA     []string
	changes bool
}

func ifChanged(changed bool, yes, no string) string {
	if changed {
		return yes
	}
	return no
}

var hostDownObjects = []hostDownObject{
	{
		typ: "kvm_network",
		hcl: func(bool) string {
			return `
resource "kvm_network" "both" {
  name = "hd-net"
  vlan = 10
  timeouts { read = "3s" }
}
`
		},
		onB: []string{"kvm_network.both"},
	},
	{
		typ: "kvm_disk",
		hcl: func(changed bool) string {
			return fmt.Sprintf(`
resource "kvm_disk" "a" {
  name     = "hd-a"
  host     = "host-a"
  size_mib = 64
  %s
}
resource "kvm_disk" "b" {
  name     = "hd-b"
  host     = "host-b"
  size_mib = 64
  timeouts { read = "3s" }
}
`, ifChanged(changed, "iotune = { read_iops_sec = 100 }", ""))
		},
		onA: []string{"kvm_disk.a"}, changes: true,
		onB: []string{"kvm_disk.b"},
	},
	{
		typ: "kvm_vm",
		hcl: func(changed bool) string {
			return fmt.Sprintf(`
resource "kvm_vm" "a" {
  name        = "hd-vm-a"
  host        = "host-a"
  vcpu        = 1
  memory_mib  = 64
  description = %q
  network_interfaces = [{ network = kvm_network.both.name }]
}
resource "kvm_vm" "b" {
  name        = "hd-vm-b"
  host        = "host-b"
  vcpu        = 1
  memory_mib  = 64
  network_interfaces = [{ network = kvm_network.both.name }]
  timeouts { read = "3s" }
}
`, ifChanged(changed, "changed while host-b is down", "first"))
		},
		onA: []string{"kvm_vm.a"}, changes: true,
		onB: []string{"kvm_vm.b"},
	},
	{
		typ: "kvm_snapshot",
		hcl: func(bool) string {
			return `
resource "kvm_snapshot" "a" {
  vm_id          = kvm_vm.a.id
  name           = "hd-snap"
  include_memory = true
}
resource "kvm_snapshot" "b" {
  vm_id          = "host-b/${kvm_vm.b.name}"
  name           = "hd-snap"
  include_memory = true
  timeouts { read = "3s" }
}
`
		},
		onA: []string{"kvm_snapshot.a"},
		onB: []string{"kvm_snapshot.b"},
	},
	{
		typ: "kvm_cluster_placement",
		hcl: func(bool) string {
			return `
resource "kvm_cluster_placement" "p" {
  request = {
    "one" = { vcpu = 1, memory_mib = 64, anti_affinity_group = "g" }
    "two" = { vcpu = 1, memory_mib = 64, anti_affinity_group = "g" }
  }
}
`
		},
		// A key on host-b cannot move (anti-affinity, host-a holds the
		// other): every key keeps its host instead of failing the plan.
		onB: []string{"kvm_cluster_placement.p"},
	},
	{
		typ: "data sources kvm_host and kvm_hosts",
		hcl: func(bool) string {
			return `
data "kvm_host" "b" { name = "host-b" }
data "kvm_hosts" "all" {}
`
		},
	},
}

// hostDownConfig renders the provider (host-b behind proxyB) and every
// row's objects.
func hostDownConfig(c *harness.Cluster, proxyB string, changed bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, `
provider "kvm" {
  token = %q
  hosts = {
    "host-a" = { endpoint = %q }
    "host-b" = { endpoint = "http://%s" }
  }
}
`, c.Token, c.Host("host-a").URL, proxyB)
	for _, o := range hostDownObjects {
		b.WriteString(o.hcl(changed))
	}
	return b.String()
}

// A host that is down never fails a plan, for any resource type: its
// objects keep their last known state (no change planned, never removed
// from state and so never re-created), objects on the other host plan and
// apply normally, and once the host is back the plan is empty.
//
// host-b is reached through a TCP proxy that is stopped (connections
// refused), then started with a toxic that holds every response (a host
// that hangs), then healed, so its kvm-hostd (on the in-memory embedded
// default) keeps its objects while the provider cannot reach them.
func TestAccHostDown_everyType(t *testing.T) {
	c := startHosts(t, harness.Options{Hosts: []string{"host-a", "host-b"}, ExtraArgs: vmTestHostArgs})
	upstream := strings.TrimPrefix(c.Host("host-b").URL, "http://")
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	proxy := toxiproxy.NewProxy(srv, "host-b", "127.0.0.1:0", upstream)
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Stop)
	proxyB := proxy.Listen

	downChecks := []plancheck.PlanCheck{}
	var onB []string
	for _, o := range hostDownObjects {
		for _, a := range o.onA {
			downChecks = append(downChecks, plancheck.ExpectResourceAction(a, map[bool]plancheck.ResourceActionType{
				true: plancheck.ResourceActionUpdate, false: plancheck.ResourceActionNoop}[o.changes]))
		}
		for _, a := range o.onB {
			onB = append(onB, a)
			downChecks = append(downChecks, plancheck.ExpectResourceAction(a, plancheck.ResourceActionNoop))
		}
	}
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{
				Config: hostDownConfig(c, proxyB, false),
				Check: func(s *terraform.State) error {
					p := s.RootModule().Resources["kvm_cluster_placement.p"]
					if p == nil || p.Primary.Attributes["assignments.one"] == p.Primary.Attributes["assignments.two"] {
						return fmt.Errorf("placement did not spread over both hosts: %v", p)
					}
					return nil
				},
			},
			{
				PreConfig: proxy.Stop,
				Config:    hostDownConfig(c, proxyB, true),
				ConfigPlanChecks: resource.ConfigPlanChecks{
					PreApply: downChecks,
					// After the apply, terraform plans again with host-b
					// still down: that plan is empty.
				},
				Check: func(s *terraform.State) error {
					for _, a := range onB {
						if s.RootModule().Resources[a] == nil {
							return fmt.Errorf("%s left the state while host-b was down", a)
						}
					}
					if got := s.RootModule().Resources["data.kvm_host.b"].Primary.Attributes["healthy"]; got != "false" {
						return fmt.Errorf("data.kvm_host.b healthy = %q while host-b is down", got)
					}
					p := s.RootModule().Resources["kvm_cluster_placement.p"].Primary.Attributes
					if p["assignments.one"] == p["assignments.two"] {
						return fmt.Errorf("placement changed while host-b was down: %v", p)
					}
					return nil
				},
			},
			{
				// host-b hangs: it accepts connections and never answers.
				// Each refresh gives up after its read timeout (3s) and
				// keeps the state: the plan is empty.
				PreConfig: func() {
					if err := proxy.Start(); err != nil {
						t.Fatal(err)
					}
					if proxy.Listen != proxyB {
						t.Fatalf("proxy came back on %s, not %s", proxy.Listen, proxyB)
					}
					if _, err := proxy.Toxics.AddToxicJson(strings.NewReader(
						`{"name":"hang","type":"timeout","stream":"downstream","attributes":{"timeout":0}}`)); err != nil {
						t.Fatal(err)
					}
				},
				Config:   hostDownConfig(c, proxyB, true),
				PlanOnly: true,
			},
			{
				PreConfig: func() {
					if err := proxy.Toxics.RemoveToxic(context.Background(), "hang"); err != nil {
						t.Fatal(err)
					}
				},
				Config:   hostDownConfig(c, proxyB, true),
				PlanOnly: true,
			},
		},
	})
}

// hostUnreachable tells a host that gave no answer from one that answered,
// on real connections: refused, cut, timed out and 503 are outages; 404,
// 409 and an untrusted certificate are not.
func TestHostUnreachable(t *testing.T) {
	ctx := context.Background()
	newClient := func(url string) *client.Client {
		cl, err := client.New(client.Options{Endpoint: url, RetryMax: 1, RetryWaitMin: time.Millisecond, RetryWaitMax: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return cl
	}
	status := func(code int) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(code)
			fmt.Fprintf(w, `{"code":%q,"message":"m"}`, api.CodeForStatus(code))
		}))
		t.Cleanup(srv.Close)
		return srv.URL
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + ln.Addr().String()
	ln.Close()
	cut := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		conn, _, _ := w.(http.Hijacker).Hijack()
		conn.Close()
	}))
	t.Cleanup(cut.Close)
	hang := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-hang }))
	t.Cleanup(func() { close(hang); slow.Close() })
	tlsSrv := httptest.NewTLSServer(http.NotFoundHandler())
	t.Cleanup(tlsSrv.Close)

	for _, tc := range []struct {
		name string
		url  string
		want bool
	}{
		{"connection refused", refused, true},
		{"connection cut", cut.URL, true},
		{"no answer before the deadline", slow.URL, true},
		{"503 unavailable", status(http.StatusServiceUnavailable), true},
		{"404 not found", status(http.StatusNotFound), false},
		{"409 conflict", status(http.StatusConflict), false},
		{"500 internal", status(http.StatusInternalServerError), false},
		{"untrusted certificate", tlsSrv.URL, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			defer cancel()
			_, err := newClient(tc.url).GetVolume(rctx, "default", "v")
			if err == nil {
				t.Fatal("no error")
			}
			if got := hostUnreachable(err); got != tc.want {
				t.Errorf("hostUnreachable(%v) = %v, want %v", err, got, tc.want)
			}
		})
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := newClient(slow.URL).GetVolume(cctx, "default", "v"); !errors.Is(err, context.Canceled) || hostUnreachable(err) {
		t.Errorf("a cancelled request (%v) must not count as an unreachable host", err)
	}

	var diags diag.Diagnostics
	warnHostUnreachable(&diags, "host-b", "disk host-b/default/d", errors.New("connection refused"))
	if diags.HasError() || diags.WarningsCount() != 1 || !strings.Contains(diags[0].Detail(), "Host host-b") ||
		!strings.Contains(diags[0].Detail(), "disk host-b/default/d") {
		t.Errorf("warning %v must name the host and the object and not be an error", diags)
	}
}

// nullStateWith builds a state of the resource's schema with every
// attribute null except the given string attributes.
func nullStateWith(t *testing.T, r fwresource.Resource, attrs map[string]string) tfsdk.State {
	t.Helper()
	ctx := context.Background()
	var sr fwresource.SchemaResponse
	r.Schema(ctx, fwresource.SchemaRequest{}, &sr)
	typ := sr.Schema.Type().TerraformType(ctx).(tftypes.Object)
	vals := map[string]tftypes.Value{}
	for name, at := range typ.AttributeTypes {
		vals[name] = tftypes.NewValue(at, nil)
		if v, ok := attrs[name]; ok {
			vals[name] = tftypes.NewValue(tftypes.String, v)
		}
	}
	return tfsdk.State{Schema: sr.Schema, Raw: tftypes.NewValue(typ, vals)}
}

// Every resource's Read, against a host whose port refuses connections,
// keeps the prior state exactly (never removes it) and reports one
// "Host Unreachable" warning naming the host and the object, no error.
func TestReadHostUnreachableKeepsState(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "http://" + ln.Addr().String()
	ln.Close()
	cl, err := client.New(client.Options{Endpoint: endpoint, RetryMax: 1, RetryWaitMin: time.Millisecond, RetryWaitMax: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	fleet := &Fleet{hosts: map[string]*FleetHost{"host-b": {Name: "host-b", Endpoint: endpoint, Client: cl}}}

	for _, tc := range []struct {
		typ    string
		r      fwresource.Resource
		attrs  map[string]string
		object string
	}{
		{"kvm_disk", &DiskResource{fleet: fleet}, map[string]string{"id": "host-b/default/d1", "host": "host-b", "pool": "default", "name": "d1"}, "disk host-b/default/d1"},
		{"kvm_vm", &VMResource{fleet: fleet}, map[string]string{"id": "1b4e28ba-2fa1-11d2-883f-0016d3cca427", "host": "host-b", "name": "web"}, "VM host-b/web"},
		{"kvm_snapshot", &SnapshotResource{fleet: fleet}, map[string]string{"id": "host-b/web/s1", "vm_id": "host-b/web", "name": "s1"}, "snapshot host-b/web/s1"},
		{"kvm_network", &NetworkResource{fleet: fleet}, map[string]string{"id": "lan", "name": "lan"}, "network lan"},
	} {
		t.Run(tc.typ, func(t *testing.T) {
			ctx := context.Background()
			prior := nullStateWith(t, tc.r, tc.attrs)
			resp := fwresource.ReadResponse{State: tfsdk.State{Schema: prior.Schema, Raw: prior.Raw.Copy()}}
			tc.r.Read(ctx, fwresource.ReadRequest{State: prior}, &resp)
			if resp.Diagnostics.HasError() {
				t.Fatalf("Read failed: %v", resp.Diagnostics)
			}
			if resp.State.Raw.IsNull() {
				t.Fatal("Read removed the resource from state: the next plan would re-create it")
			}
			if tc.typ != "kvm_network" && !resp.State.Raw.Equal(prior.Raw) {
				t.Errorf("state changed:\n got %v\nwant %v", resp.State.Raw, prior.Raw)
			}
			if len(resp.Diagnostics) != 1 || resp.Diagnostics[0].Summary() != "Host Unreachable" ||
				!strings.Contains(resp.Diagnostics[0].Detail(), "Host host-b") || !strings.Contains(resp.Diagnostics[0].Detail(), tc.object) {
				t.Errorf("diagnostics %v, want one Host Unreachable warning naming host-b and %s", resp.Diagnostics, tc.object)
			}
		})
	}
}
