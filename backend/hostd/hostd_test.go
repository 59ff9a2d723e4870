package hostd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// startMain runs the real server in-process on the embedded default, the
// same way the command does.
func startMain(t *testing.T, extra ...string) (*Main, string) {
	t.Helper()
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("s3cret-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--name", "host-t", "--listen", "127.0.0.1:0", "--libvirt-uri", "test:///default",
		"--ovsdb", "embedded", "--pool-dir", filepath.Join(dir, "pool"), "--token-file", tok,
		"--audit-log", filepath.Join(dir, "audit.log")}, extra...)
	cfg, err := ParseFlags(args, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	m := &Main{Config: cfg, Stdout: &out, Log: NewLogger(cfg, io.Discard)}
	if err := m.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	go func() { _ = m.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = m.Shutdown(ctx)
		m.Close()
	})
	return m, filepath.Join(dir, "audit.log")
}

func call(t *testing.T, method, url, token, body string) (int, api.Error, []byte) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, url, r)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e api.Error
	_ = json.Unmarshal(b, &e)
	return resp.StatusCode, e, b
}

func TestAuth(t *testing.T) {
	m, _ := startMain(t)
	for _, tok := range []string{"", "wrong", "s3cret-01234567892", "s3cre"} {
		st, e, _ := call(t, "GET", m.URL()+"/v1/host", tok, "")
		if st != 401 || e.Code != api.CodeUnauthorized {
			t.Errorf("token %q: status %d code %q, want 401 unauthorized", tok, st, e.Code)
		}
	}
	if st, _, b := call(t, "GET", m.URL()+"/v1/host", "s3cret-0123456789", ""); st != 200 || !strings.Contains(string(b), `"name":"host-t"`) {
		t.Errorf("valid token: %d %s", st, b)
	}
	// healthz and metrics need no token.
	if st, _, _ := call(t, "GET", m.URL()+"/healthz", "", ""); st != 200 {
		t.Errorf("/healthz: %d", st)
	}
	if st, _, b := call(t, "GET", m.URL()+"/metrics", "", ""); st != 200 || !strings.Contains(string(b), "kvm_hostd_http_requests_total") {
		t.Errorf("/metrics: %d", st)
	}
}

func TestUnknownRouteIsJSON404(t *testing.T) {
	m, _ := startMain(t)
	for _, p := range []string{"/v1/nope", "/nope", "/v2/host"} {
		st, e, b := call(t, "GET", m.URL()+p, "s3cret-0123456789", "")
		if st != 404 || e.Code != api.CodeNotFound || e.Message == "" {
			t.Errorf("%s: %d %s, want JSON 404", p, st, b)
		}
	}
}

func TestHostileNamesRefusedBeforeLibvirt(t *testing.T) {
	m, _ := startMain(t)
	for _, name := range []string{"..%2Fx%3C%2Fname%3E", "a%00b", strings.Repeat("x", 300), "a%20b", "%3Cx%3E", "x..y", "a%2F..%2Fb"} {
		st, e, b := call(t, "PUT", m.URL()+"/v1/pools/default/volumes/"+name, "s3cret-0123456789", `{"size_mib":1}`)
		if st != 400 || e.Code != api.CodeInvalid {
			t.Errorf("volume %q: %d %s, want 400 invalid", name, st, b)
		}
		st, e, b = call(t, "PUT", m.URL()+"/v1/vms/"+name, "s3cret-0123456789", `{"vcpu":1,"memory_mib":64}`)
		if st != 400 || e.Code != api.CodeInvalid {
			t.Errorf("vm %q: %d %s, want 400 invalid", name, st, b)
		}
	}
	_, _, b := call(t, "GET", m.URL()+"/v1/pools/default/volumes", "s3cret-0123456789", "")
	var l api.VolumeList
	_ = json.Unmarshal(b, &l)
	for _, v := range l.Volumes {
		if strings.Contains(v.Name, "x") {
			t.Errorf("a hostile create left volume %q behind", v.Name)
		}
	}
}

func TestIdempotentPutAndConflict(t *testing.T) {
	m, audit := startMain(t)
	u := m.URL() + "/v1/pools/default/volumes/idem-1"
	if st, _, b := call(t, "PUT", u, "s3cret-0123456789", `{"size_mib":16}`); st != 201 {
		t.Fatalf("first PUT: %d %s", st, b)
	}
	if st, _, b := call(t, "PUT", u, "s3cret-0123456789", `{"size_mib":16}`); st != 200 {
		t.Fatalf("retried PUT: %d %s, want 200 (same object)", st, b)
	}
	if st, e, b := call(t, "PUT", u, "s3cret-0123456789", `{"size_mib":32}`); st != 409 || e.Code != api.CodeConflict {
		t.Fatalf("PUT with another spec: %d %s, want 409", st, b)
	}
	if st, e, _ := call(t, "PUT", u, "s3cret-0123456789", `{"size_mib":16,"bogus":1}`); st != 400 || e.Code != api.CodeInvalid {
		t.Fatalf("unknown field: %d, want 400", st)
	}
	if st, _, _ := call(t, "DELETE", u, "s3cret-0123456789", ""); st != 204 {
		t.Fatalf("DELETE: %d", st)
	}
	b, err := os.ReadFile(audit)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 5 {
		t.Fatalf("audit log has %d lines, want 5 (one per mutating request):\n%s", len(lines), b)
	}
	var e struct {
		Who, Method, Path string
		RequestID         string `json:"request_id"`
		Status            int
	}
	if err := json.Unmarshal([]byte(lines[0]), &e); err != nil || e.Method != "PUT" || e.Status != 201 || e.Path != "/v1/pools/default/volumes/idem-1" || e.Who != "token" || e.RequestID == "" {
		t.Fatalf("audit line %q: %+v %v", lines[0], e, err)
	}
}

func TestParseFlagsEnvAndHelp(t *testing.T) {
	env := map[string]string{"KVM_HOSTD_LISTEN": "127.0.0.1:9999", "KVM_HOSTD_TOKEN_FILE": "/x", "KVM_HOSTD_LABELS": "zone=a,gpu=yes", "KVM_HOSTD_CPU_OVERCOMMIT": "2"}
	cfg, err := ParseFlags([]string{"--name", "n"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:9999" || cfg.TokenFile != "/x" || cfg.Labels["gpu"] != "yes" || cfg.CPUOvercommit != 2 {
		t.Fatalf("env not applied: %+v", cfg)
	}
	cfg, err = ParseFlags([]string{"--name", "n", "--listen", "127.0.0.1:1"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil || cfg.Listen != "127.0.0.1:1" {
		t.Fatalf("flag should override env: %v %+v", err, cfg)
	}
	var help bytes.Buffer
	if _, err := ParseFlags([]string{"--help"}, func(string) string { return "" }, &help); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	if !strings.Contains(help.String(), "KVM_HOSTD_POOL_DIR") || !strings.Contains(help.String(), "--ovsdb") {
		t.Fatalf("--help output lacks flags/env names:\n%s", help.String())
	}
	if _, err := ParseFlags([]string{"--name", "n", "--listen", "0.0.0.0:7443"}, func(string) string { return "" }, io.Discard); err == nil {
		t.Fatal("missing --token-file accepted on a non-loopback address")
	}
	cfg, err = ParseFlags([]string{"--name", "n", "--listen", "127.0.0.1:7701"}, func(string) string { return "" }, io.Discard)
	if err != nil || !cfg.Unauthenticated() {
		t.Fatalf("no token on loopback: %v (unauthenticated %v), want accepted", err, cfg != nil && cfg.Unauthenticated())
	}
}

// --version answers before any validation, even with a broken environment
// (packaging checks run it on a host that is not configured yet), and
// KVM_HOSTD_VERSION does not turn it on.
func TestParseFlagsVersion(t *testing.T) {
	bad := func(k string) string {
		if k == "KVM_HOSTD_CPU_OVERCOMMIT" {
			return "lots"
		}
		return ""
	}
	if _, err := ParseFlags([]string{"--version"}, bad, io.Discard); !errors.Is(err, ErrVersion) {
		t.Fatalf("--version with a broken environment: %v, want ErrVersion", err)
	}
	env := func(k string) string {
		if k == "KVM_HOSTD_VERSION" {
			return "true"
		}
		return ""
	}
	if cfg, err := ParseFlags([]string{"--name", "n"}, env, io.Discard); err != nil || cfg == nil {
		t.Fatalf("KVM_HOSTD_VERSION must be ignored: %v", err)
	}
	var help bytes.Buffer
	_, _ = ParseFlags([]string{"--help"}, func(string) string { return "" }, &help)
	if strings.Contains(help.String(), "KVM_HOSTD_VERSION") || !strings.Contains(help.String(), "--version") {
		t.Fatalf("--help should list --version without an environment variable:\n%s", help.String())
	}
}

// A volume attached to one VM cannot be attached to another, nor deleted.
func TestVolumeInUse(t *testing.T) {
	m, _ := startMain(t)
	if st, _, b := call(t, "PUT", m.URL()+"/v1/pools/default/volumes/shared-1", "s3cret-0123456789", `{"size_mib":16}`); st != 201 {
		t.Fatalf("volume: %d %s", st, b)
	}
	vm := `{"vcpu":1,"memory_mib":64,"running":true,"disks":[{"volume":"shared-1"}]}`
	if st, _, b := call(t, "PUT", m.URL()+"/v1/vms/user-1", "s3cret-0123456789", vm); st != 201 {
		t.Fatalf("first VM: %d %s", st, b)
	}
	st, e, b := call(t, "PUT", m.URL()+"/v1/vms/user-2", "s3cret-0123456789", vm)
	if st != 409 || !strings.Contains(e.Message, "already attached to VM user-1") {
		t.Fatalf("second VM on the same volume: %d %s, want 409 naming user-1", st, b)
	}
	st, e, b = call(t, "DELETE", m.URL()+"/v1/pools/default/volumes/shared-1", "s3cret-0123456789", "")
	if st != 409 || !strings.Contains(e.Message, "user-1") {
		t.Fatalf("deleting an attached volume: %d %s, want 409 naming user-1", st, b)
	}
	if st, _, _ := call(t, "GET", m.URL()+"/v1/vms/user-2", "s3cret-0123456789", ""); st != 404 {
		t.Fatalf("refused VM exists: %d", st)
	}
}
