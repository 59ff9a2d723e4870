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

// subnetSwitch is the real embedded switch with subnets added to the
// networks it reads back, as the host keeps them once networks carry one.
type subnetSwitch struct {
	service.Switch
	subnets map[string]api.Subnet
	dhcpIP  string
}

func (s subnetSwitch) GetNetwork(ctx context.Context, name string) (*api.Network, error) {
	n, err := s.Switch.GetNetwork(ctx, name)
	if sub, ok := s.subnets[name]; ok && err == nil {
		n.Subnet, n.DHCPServerIP = &sub, s.dhcpIP
	}
	return n, err
}

func guestTestServer(t *testing.T, wrap ...func(service.Switch) service.Switch) (*service.Service, http.Handler) {
	t.Helper()
	svc := testService(t, "g", wrap...)
	return svc, New(svc, Options{Log: slog.New(slog.DiscardHandler)})
}

// testService is a service on libvirt's test driver and the embedded
// OVSDB, its switch wrapped by wrap (fault doubles).
func testService(t *testing.T, name string, wrap ...func(service.Switch) service.Switch) *service.Service {
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
	var ssw service.Switch = sw
	for _, w := range wrap {
		ssw = w(ssw)
	}
	svc, err := service.New(context.Background(), service.Config{
		Name: name, TunnelIP: "10.0.0.1", PoolDir: "/default-pool", LibvirtURI: "test:///default",
	}, hv, ssw, log)
	if err != nil {
		t.Fatal(err)
	}
	return svc
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
	// Link-local addresses are not reported (see service.usableAddr).
	svc.SetLeaseSource(fakeLeases{"52:54:00:00:00:aa": {"fe80::1", "10.0.0.5"}, "52:54:00:00:00:bb": {"10.0.0.6"}})
	vm := get()
	if vm.IPv4Address != "10.0.0.5" || vm.AddressSource != "lease" ||
		strings.Join(vm.Interfaces[0].Addresses, ",") != "10.0.0.5" || strings.Join(vm.Interfaces[1].Addresses, ",") != "10.0.0.6" {
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

func TestVMStaticIPv4Rules(t *testing.T) {
	svc, _ := guestTestServer(t, func(sw service.Switch) service.Switch {
		return subnetSwitch{Switch: sw, dhcpIP: "10.20.0.254", subnets: map[string]api.Subnet{
			"lan": {CIDR: "10.20.0.0/24", Gateway: "10.20.0.1"}, "lan2": {CIDR: "10.20.0.0/24"}}}
	})
	ctx := context.Background()
	for _, n := range []string{"plain", "lan", "lan2"} {
		if _, err := svc.PutNetwork(ctx, n, api.NetworkSpec{}); err != nil {
			t.Fatal(err)
		}
	}
	spec := func(ifs ...api.VMInterface) api.VMSpec { return api.VMSpec{VCPU: 1, MemoryMiB: 64, Interfaces: ifs} }
	nic := func(network, ip string) api.VMInterface { return api.VMInterface{Network: network, IPv4Address: ip} }
	for _, c := range []struct {
		spec api.VMSpec
		code string
		msg  string
	}{
		{spec(nic("plain", "10.20.0.5")), api.CodeInvalid, "network plain has no subnet"},
		{spec(nic("lan", "10.30.0.5")), api.CodeInvalid, "outside the network's subnet 10.20.0.0/24"},
		{spec(nic("lan", "10.20.0.1")), api.CodeInvalid, "gateway"},
		{spec(nic("lan", "10.20.0.254")), api.CodeInvalid, "reserved for a host's DHCP server"},
		{spec(nic("lan", "10.20.0.255")), api.CodeInvalid, "broadcast"},
		{spec(nic("lan", "10.20.0.5"), nic("lan2", "10.20.0.5")), api.CodeInvalid, "network_interfaces[1]: ipv4_address 10.20.0.5 is already network_interfaces[0]'s"},
	} {
		_, _, err := svc.PutVM(ctx, "bad", c.spec, service.VMMeta{})
		if !api.IsCode(err, c.code) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%+v: got %v, want %s %q", c.spec.Interfaces, err, c.code, c.msg)
		}
	}
	a, _, err := svc.PutVM(ctx, "a", spec(nic("lan", "10.20.0.5")), service.VMMeta{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.DeleteVM(ctx, "a", 0) })
	if a.Interfaces[0].IPv4Address != "10.20.0.5" {
		t.Fatalf("read back: %+v", a.Interfaces)
	}
	// The same address on the same network: 409 naming the VM that has it.
	_, _, err = svc.PutVM(ctx, "b", spec(nic("lan", "10.20.0.5")), service.VMMeta{})
	if !api.IsCode(err, api.CodeConflict) || !strings.Contains(err.Error(), "already used by VM a on network lan") {
		t.Fatalf("duplicate: %v", err)
	}
	// On another network it is another address.
	if _, _, err = svc.PutVM(ctx, "b", spec(nic("lan2", "10.20.0.5")), service.VMMeta{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.DeleteVM(ctx, "b", 0) })
	// An update may keep its own address but not take another VM's.
	b, _ := svc.GetVM(ctx, "b")
	upd := b.VMSpec
	upd.Interfaces = []api.VMInterface{{Network: "lan", MAC: b.Interfaces[0].MAC, IPv4Address: "10.20.0.5"}}
	if _, err = svc.UpdateVM(ctx, "b", upd); !api.IsCode(err, api.CodeConflict) {
		t.Fatalf("update to a's address: %v", err)
	}
	upd.Interfaces[0] = api.VMInterface{Network: "lan2", MAC: b.Interfaces[0].MAC, IPv4Address: "10.20.0.5"}
	upd.Description = "same address, other change"
	if _, err = svc.UpdateVM(ctx, "b", upd); err != nil {
		t.Fatalf("update keeping its own address: %v", err)
	}
}
