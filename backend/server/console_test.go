package server

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/kvmfleet/terraform-provider-kvm/backend/hypervisor"
	"github.com/kvmfleet/terraform-provider-kvm/backend/service"
	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// hostileConsole is libvirt's test driver with a serial log a hostile
// guest wrote.
type hostileConsole struct {
	service.Hypervisor
	log []byte
}

func (h hostileConsole) ConsoleLog(context.Context, string, int64) ([]byte, bool, error) {
	return h.log, false, nil
}

const hostileLog = "boot ok\n\x1b[2J\x1b[H\x1b]52;c;cm0gLXJmIH4=\x07\a\x00\xc2\x9b31m\xff\rError: fake\n"

func TestVMConsoleEscaped(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	real, err := hypervisor.Open("test:///default", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = real.Close() })
	svc, err := service.New(context.Background(), service.Config{Name: "g", PoolDir: "/default-pool", LibvirtURI: "test:///default"},
		hostileConsole{Hypervisor: real, log: []byte(hostileLog)}, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	h := New(svc, Options{Log: log})
	if _, _, err := svc.PutVM(context.Background(), "con", api.VMSpec{VCPU: 1, MemoryMiB: 64}, service.VMMeta{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.DeleteVM(context.Background(), "con", 0) })

	const want = "boot ok\n\\x1b[2J\\x1b[H\\x1b]52;c;cm0gLXJmIH4=\\x07\\x07\\x00\\u009b31m\\x0dError: fake\n"
	// Raw by default, labelled as text that must not be sniffed.
	rec := serve(h, "GET", "/v1/vms/con/console", "")
	if rec.Code != 200 || rec.Body.String() != hostileLog || rec.Header().Get("Content-Type") != "text/plain; charset=utf-8" ||
		rec.Header().Get("X-Content-Type-Options") != "nosniff" || rec.Header().Get("X-Console-Escaped") != "false" {
		t.Fatalf("raw: %d %q %v", rec.Code, rec.Body, rec.Header())
	}
	rec = serve(h, "GET", "/v1/vms/con/console?escape=true", "text/plain")
	if rec.Code != 200 || rec.Body.String() != want || rec.Header().Get("X-Console-Escaped") != "true" ||
		rec.Header().Get("X-Content-Type-Options") != "nosniff" {
		t.Fatalf("escaped: %d %q %v", rec.Code, rec.Body, rec.Header())
	}
	var c api.Console
	rec = serve(h, "GET", "/v1/vms/con/console?escape=1&bytes=4096", "application/json")
	if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &c) != nil || c.Text != want || !c.Escaped {
		t.Fatalf("escaped JSON: %d %q", rec.Code, rec.Body)
	}
	rec = serve(h, "GET", "/v1/vms/con/console", "application/json")
	if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &c) != nil || c.Escaped || !strings.Contains(c.Text, "\x1b[2J") {
		t.Fatalf("raw JSON: %d %q", rec.Code, rec.Body)
	}
	if rec := serve(h, "GET", "/v1/vms/con/console?escape=maybe", ""); rec.Code != 400 {
		t.Fatalf("escape=maybe: %d %s", rec.Code, rec.Body)
	}
}
