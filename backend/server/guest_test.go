package server

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/backend/hypervisor"
	"github.com/kvmfleet/terraform-provider-kvm/backend/service"
	"github.com/kvmfleet/terraform-provider-kvm/backend/vswitch"
	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// fakeLeases stands in for the host's DHCP server, which this package
// does not run.
type fakeLeases map[string][]string

func (f fakeLeases) LeasesFor(mac string) []string { return f[mac] }

func guestTestServer(t *testing.T) (*service.Service, http.Handler) {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	hv, err := hypervisor.Open("test:///default", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hv.Close() })
	sw, err := vswitch.Open(context.Background(), vswitch.EndpointEmbedded, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sw.Close() })
	svc, err := service.New(context.Background(), service.Config{
		Name: "g", TunnelIP: "10.0.0.1", PoolDir: "/default-pool", LibvirtURI: "test:///default",
	}, hv, sw, log)
	if err != nil {
		t.Fatal(err)
	}
	return svc, New(svc, Options{Log: log})
}

func serve(h http.Handler, method, path, accept string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestVMConsoleOnTestDriver(t *testing.T) {
	svc, h := guestTestServer(t)
	ctx := context.Background()
	if _, _, err := svc.PutVM(ctx, "con", api.VMSpec{VCPU: 1, MemoryMiB: 64, Running: true}, service.VMMeta{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.DeleteVM(ctx, "con", 0) })

	// No serial log on the test driver: an empty text body, not an error.
	rec := serve(h, "GET", "/v1/vms/con/console", "")
	if rec.Code != 200 || rec.Body.Len() != 0 || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain") ||
		rec.Header().Get("X-Console-Truncated") != "false" {
		t.Fatalf("text console: %d %q %v", rec.Code, rec.Body, rec.Header())
	}
	rec = serve(h, "GET", "/v1/vms/con/console?bytes=100", "application/json")
	var c api.Console
	if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &c) != nil || c.VM != "con" || c.Text != "" || c.Truncated {
		t.Fatalf("JSON console: %d %q", rec.Code, rec.Body)
	}
	for path, code := range map[string]int{
		"/v1/vms/nope/console":               404,
		"/v1/vms/con/console?bytes=0":        400,
		"/v1/vms/con/console?bytes=x":        400,
		"/v1/vms/con/console?bytes=99999999": 400,
	} {
		if rec := serve(h, "GET", path, ""); rec.Code != code {
			t.Errorf("GET %s: %d %s, want %d", path, rec.Code, rec.Body, code)
		}
	}
}

func TestVMAddressesFromLeases(t *testing.T) {
	svc, h := guestTestServer(t)
	ctx := context.Background()
	if _, err := svc.PutNetwork(ctx, "lan", api.NetworkSpec{}); err != nil {
		t.Fatal(err)
	}
	spec := api.VMSpec{VCPU: 1, MemoryMiB: 64, Running: true, Interfaces: []api.VMInterface{
		{Network: "lan", MAC: "52:54:00:00:00:aa"}, {Network: "lan", MAC: "52:54:00:00:00:bb"}}}
	if _, _, err := svc.PutVM(ctx, "addr", spec, service.VMMeta{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.DeleteVM(ctx, "addr", 0) })

	get := func() api.VM {
		t.Helper()
		start := time.Now()
		rec := serve(h, "GET", "/v1/vms/addr", "")
		if d := time.Since(start); d > time.Second {
			t.Fatalf("GET took %v", d)
		}
		var vm api.VM
		if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &vm) != nil {
			t.Fatalf("GET: %d %s", rec.Code, rec.Body)
		}
		return vm
	}
	// The test driver runs no agent and there is no DHCP: no addresses.
	if vm := get(); vm.IPv4Address != "" || vm.AddressSource != "" || vm.Interfaces[0].Addresses != nil || !*vm.GuestAgent {
		t.Fatalf("without leases: %+v", vm)
	}
	svc.SetLeaseSource(fakeLeases{"52:54:00:00:00:aa": {"fe80::1", "10.0.0.5"}, "52:54:00:00:00:bb": {"10.0.0.6"}})
	vm := get()
	if vm.IPv4Address != "10.0.0.5" || vm.AddressSource != "lease" ||
		strings.Join(vm.Interfaces[0].Addresses, ",") != "fe80::1,10.0.0.5" || strings.Join(vm.Interfaces[1].Addresses, ",") != "10.0.0.6" {
		t.Fatalf("from leases: %+v", vm)
	}
	var list api.VMList
	if rec := serve(h, "GET", "/v1/vms", ""); rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &list) != nil {
		t.Fatalf("list: %d %s", rec.Code, rec.Body)
	}
	for _, v := range list.VMs {
		if v.Name == "addr" && v.IPv4Address != "10.0.0.5" {
			t.Fatalf("list: %+v", v)
		}
	}
	// A stopped VM reports none.
	spec.Running = false
	if _, err := svc.UpdateVM(ctx, "addr", spec); err != nil {
		t.Fatal(err)
	}
	if vm := get(); vm.IPv4Address != "" || vm.Interfaces[0].Addresses != nil {
		t.Fatalf("stopped: %+v", vm)
	}
}
