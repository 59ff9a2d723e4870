package server

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/backend/hypervisor"
	"github.com/kvmfleet/terraform-provider-kvm/backend/service"
	"github.com/kvmfleet/terraform-provider-kvm/backend/vswitch"
	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// The fuzz targets below send request bodies through the whole server,
// decode, validation and service, on libvirt's test driver and the
// embedded OVSDB: no input may panic or give a 5xx, and a body that does
// not decode or breaks a rule of internal/api gives 400. Objects that
// bodies act on are absent where a valid body would otherwise start a
// download, a copy or a migration, so validation is what they exercise.

// fuzzServer is a kvm-hostd handler on libvirt's test driver and the
// embedded OVSDB.
func fuzzServer(f *testing.F) http.Handler {
	f.Helper()
	log := slog.New(slog.DiscardHandler)
	hv, err := hypervisor.Open("test:///default", log)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = hv.Close() })
	sw, err := vswitch.Open(context.Background(), vswitch.EndpointEmbedded, log)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = sw.Close() })
	svc, err := service.New(context.Background(), service.Config{
		Name: "fuzz", TunnelIP: "10.0.0.1", PoolDir: "/default-pool", LibvirtURI: "test:///default",
	}, hv, sw, log)
	if err != nil {
		f.Fatal(err)
	}
	return New(svc, Options{Log: log})
}

// decodes reports whether body decodes into v as the server decodes it.
func decodes(body []byte, v any) bool {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	return dec.Decode(v) == nil
}

// fuzzRequest sends body and checks the answer: never 5xx, and 400 with a
// JSON error of code invalid when wantInvalid.
func fuzzRequest(t *testing.T, h http.Handler, method, path string, body []byte, wantInvalid bool) {
	t.Helper()
	req := httptest.NewRequest(method, path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	start := time.Now()
	h.ServeHTTP(rec, req)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("%s %s %q took %v", method, path, body, d)
	}
	if rec.Code >= 500 {
		t.Fatalf("%s %s %q: status %d: %s", method, path, body, rec.Code, rec.Body)
	}
	if wantInvalid {
		var e api.Error
		if rec.Code != http.StatusBadRequest || json.Unmarshal(rec.Body.Bytes(), &e) != nil || e.Code != api.CodeInvalid {
			t.Fatalf("%s %s %q: status %d, body %s; want 400 %s", method, path, body, rec.Code, rec.Body, api.CodeInvalid)
		}
	}
}

func FuzzVMSpecBody(f *testing.F) {
	for _, s := range []string{
		`{"vcpu":1,"memory_mib":64,"running":false}`,
		`{"vcpu":1,"memory_mib":64,"running":true,"cpu":{"mode":"custom","pinning":["0"]},"tags":{"a":"b"}}`,
		`{"vcpu":2,"memory_mib":128,"disks":[{"volume":"absent"}]}`,
		`{"vcpu":1,"memory_mib":64,"interfaces":[{"network":"absent"}]}`,
		`{"vcpu":1,"memory_mib":64,"cpu":{"pinning":["3-1"]}}`,
		`{"vcpu":1,"memory_mib":64,"cpu":{"sockets":274177,"cores":67280421310721}}`,
		`{"vcpu":1,"memory_mib":64,"max_memory_mib":4611686018427387904}`,
		`{"vcpu":1,"memory_mib":64,"disks":[{"volume":"../../etc/passwd"}]}`,
		`{"vcpu":1,"memory_mib":64,"interfaces":[{"network":"n","mac":"zz"}]}`,
		`{"vcpu":1,"memory_mib":64,"bogus":1}`,
		`{"vcpu":"1"}`, `{`, ``, `null`, `[]`,
	} {
		f.Add([]byte(s))
	}
	h := fuzzServer(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		var spec api.VMSpec
		invalid := !decodes(body, &spec) || api.ValidateVMSpec(&spec) != nil
		// PUT creates (or finds) fz; PATCH validates, then finds no VM.
		fuzzRequest(t, h, http.MethodPut, "/v1/vms/fz", body, invalid)
		fuzzRequest(t, h, http.MethodPatch, "/v1/vms/fz-absent", body, invalid)
	})
}

func FuzzVolumeSpecBody(f *testing.F) {
	for _, s := range []string{
		`{"size_mib":64}`,
		`{"size_mib":64,"format":"raw","iotune":{"read_iops_sec":100}}`,
		`{"base_volume":"base"}`,
		`{"source_url":"https://example.com/x.qcow2","source_checksum":"sha256:` + "abababababababababababababababababababababababababababababababab" + `"}`,
		`{"source_url":"file:///etc/passwd"}`,
		`{"size_mib":-1}`, `{"size_mib":1,"format":"vmdk"}`, `{"base_volume":"b","format":"raw"}`,
		`{"source_url":"http://x/y","source_checksum":"md5:1"}`, `{"size_mib":1,"iotune":{"read_iops_sec":-5}}`,
		`{}`, `{`, `null`,
	} {
		f.Add([]byte(s))
	}
	h := fuzzServer(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		var spec api.VolumeSpec
		decoded := decodes(body, &spec)
		// A copy request carries a volume spec too: what decoded of this one.
		req, _ := json.Marshal(api.VolumeCopyRequest{ContentURL: "http://127.0.0.1:1/v1/pools/default/volumes/v/content", Spec: spec})
		copyInvalid := spec.Recreate || api.ValidateVolumeSpec(&spec) != nil || spec.SizeMiB == 0
		fuzzRequest(t, h, http.MethodPut, "/v1/pools/fz-absent/volumes/v", body, !decoded || api.ValidateVolumeSpec(&spec) != nil)
		fuzzRequest(t, h, http.MethodPost, "/v1/pools/fz-absent/volumes/v/copy", req, copyInvalid)
	})
}

func FuzzNetworkSpecBody(f *testing.F) {
	for _, s := range []string{
		`{"vlan":10}`,
		`{"overlay":"vxlan","vni":5,"mtu":1450,"peers":[{"host":"b","tunnel_ip":"10.0.0.2"}]}`,
		`{"overlay":"geneve","vni":16777215,"peers":[{"host":"fuzz","tunnel_ip":"10.0.0.1"}]}`,
		`{"vlan":4095}`, `{"vni":3}`, `{"overlay":"vxlan"}`, `{"overlay":"gre","vni":1}`, `{"mtu":100}`, `{"mtu":65535}`,
		`{"overlay":"vxlan","vni":1,"peers":[{"host":"b","tunnel_ip":"nope"}]}`,
		`{"overlay":"vxlan","vni":1,"peers":[{"host":"b","tunnel_ip":"10.0.0.2"},{"host":"b","tunnel_ip":"10.0.0.3"}]}`,
		`{}`, `{`, `null`,
	} {
		f.Add([]byte(s))
	}
	h := fuzzServer(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		var spec api.NetworkSpec
		invalid := !decodes(body, &spec) || api.ValidateNetworkSpec("fz", spec) != nil
		fuzzRequest(t, h, http.MethodPut, "/v1/networks/fz", body, invalid)
	})
}

func FuzzSnapshotSpecBody(f *testing.F) {
	for _, s := range []string{`{"description":"before upgrade","include_memory":true}`, `{}`, `{"include_memory":"yes"}`, `{`, `null`} {
		f.Add([]byte(s))
	}
	h := fuzzServer(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		var spec api.SnapshotSpec
		invalid := !decodes(body, &spec) || api.CheckDescription(spec.Description) != nil
		fuzzRequest(t, h, http.MethodPut, "/v1/vms/fz-absent/snapshots/s", body, invalid)
	})
}

func FuzzMigrateRequestBody(f *testing.F) {
	for _, s := range []string{
		`{"target_host":"b","target_uri":"qemu+tcp://10.0.0.2/system","mode":"live"}`,
		`{"target_uri":"qemu+tcp://10.0.0.2/system","mode":"offline"}`,
		`{"target_uri":"qemu+tcp://10.0.0.2/system"}`,
		`{"target_uri":"x","mode":"teleport"}`, `{"mode":"live"}`, `{}`, `{`, `null`,
	} {
		f.Add([]byte(s))
	}
	h := fuzzServer(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		var req api.MigrateRequest
		invalid := !decodes(body, &req) || api.ValidateMigrateRequest(&req) != nil
		fuzzRequest(t, h, http.MethodPost, "/v1/vms/fz-absent/migrate", body, invalid)
	})
}
