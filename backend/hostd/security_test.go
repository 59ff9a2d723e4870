package hostd

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

const testToken = "s3cret-0123456789"

// The read-only token reads everything and writes nothing.
func TestReadOnlyToken(t *testing.T) {
	dir := t.TempDir()
	ro := filepath.Join(dir, "read-token")
	const readToken = "read-only-0123456789"
	if err := os.WriteFile(ro, []byte(readToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m, audit := startMain(t, "--read-token-file", ro)
	// Something to read.
	if st, _, b := call(t, "PUT", m.URL()+"/v1/pools/default/volumes/ro-1", testToken, `{"size_mib":16}`); st != 201 {
		t.Fatalf("PUT with the full token: %d %s", st, b)
	}
	for _, p := range []string{"/v1/host", "/v1/vms", "/v1/networks", "/v1/pools/default/volumes", "/v1/pools/default/volumes/ro-1"} {
		if st, _, b := call(t, "GET", m.URL()+p, readToken, ""); st != 200 {
			t.Errorf("GET %s with the read-only token: %d %s", p, st, b)
		}
	}
	// A volume's bytes are not for the read token, by GET or HEAD: no plan
	// needs them, and the token must not be a way to copy a disk away.
	for _, method := range []string{"GET", "HEAD"} {
		if st, _, b := call(t, method, m.URL()+"/v1/pools/default/volumes/ro-1/content", readToken, ""); st != 403 {
			t.Errorf("%s content with the read-only token: %d %s, want 403", method, st, b)
		}
	}
	if st, _, b := call(t, "GET", m.URL()+"/v1/pools/default/volumes/ro-1/content", testToken, ""); st != 200 {
		t.Errorf("GET content with the full token: %d %.200s, want 200", st, b)
	}
	writes := []struct{ method, path, body string }{
		{"PUT", "/v1/pools/default/volumes/ro-2", `{"size_mib":16}`},
		{"PATCH", "/v1/pools/default/volumes/ro-1", `{"size_mib":32}`},
		{"DELETE", "/v1/pools/default/volumes/ro-1", ""},
		{"POST", "/v1/pools/default/volumes/ro-1/copy", `{}`},
		{"PUT", "/v1/vms/ro-vm", `{"vcpu":1,"memory_mib":64}`},
		{"POST", "/v1/vms/ro-vm/migrate", `{}`},
		{"PUT", "/v1/networks/ro-net", `{}`},
		{"PUT", "/v1/vms/ro-vm/snapshots/s", `{}`},
	}
	for _, w := range writes {
		st, e, b := call(t, w.method, m.URL()+w.path, readToken, w.body)
		if st != 403 || e.Code != api.CodeForbidden {
			t.Errorf("%s %s with the read-only token: %d %s, want 403 forbidden", w.method, w.path, st, b)
		}
	}
	// Nothing changed.
	_, _, b := call(t, "GET", m.URL()+"/v1/pools/default/volumes/ro-1", testToken, "")
	var v api.Volume
	if err := json.Unmarshal(b, &v); err != nil || v.SizeMiB != 16 {
		t.Errorf("ro-1 after refused writes: %s", b)
	}
	if st, _, _ := call(t, "GET", m.URL()+"/v1/pools/default/volumes/ro-2", testToken, ""); st != 404 {
		t.Errorf("a refused PUT created ro-2: %d", st)
	}
	// The audit log says which credential was used, also for a wrong one.
	if st, _, _ := call(t, "DELETE", m.URL()+"/v1/pools/default/volumes/ro-1", "not-the-token-at-all", ""); st != 401 {
		t.Errorf("wrong token: %d, want 401", st)
	}
	log, _ := os.ReadFile(audit)
	for _, want := range []string{`"who":"read-token","method":"DELETE"`, `"who":"read-token","method":"HEAD","path":"/v1/pools/default/volumes/ro-1/content","status":403`, `"who":"invalid-token","method":"DELETE"`, `"who":"token","method":"PUT"`} {
		if !strings.Contains(string(log), want) {
			t.Errorf("audit log lacks %s:\n%s", want, log)
		}
	}
}

// Token files that others can read, short tokens and a read token equal to
// the full one are refused at startup, with the reason.
func TestTokenFileChecks(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good", testToken+"\n", 0o600)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"world-readable", []string{"--token-file", write("wr", testToken, 0o644)}, "accessible by other users"},
		{"world-writable", []string{"--token-file", write("ww", testToken, 0o602)}, "accessible by other users"},
		{"short", []string{"--token-file", write("short", "abc123", 0o600)}, "at least 16"},
		{"empty", []string{"--token-file", write("empty", "\n", 0o600)}, "is empty"},
		{"two lines", []string{"--token-file", write("two", testToken+"\nmore-token-0123456789", 0o600)}, "one line"},
		{"read equals full", []string{"--token-file", good, "--read-token-file", good}, "same token"},
		{"read short", []string{"--token-file", good, "--read-token-file", write("rshort", "x", 0o600)}, "at least 16"},
		{"read world-readable", []string{"--token-file", good, "--read-token-file", write("rwr", "read-token-0123456789", 0o604)}, "accessible by other users"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"--name", "h", "--listen", "127.0.0.1:0", "--libvirt-uri", "test:///default",
				"--ovsdb", "embedded", "--pool-dir", filepath.Join(dir, "pool")}, c.args...)
			cfg, err := ParseFlags(args, func(string) string { return "" }, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			m := &Main{Config: cfg, Log: NewLogger(cfg, io.Discard)}
			err = m.Open(context.Background())
			if err == nil {
				m.Close()
				t.Fatalf("started; want an error containing %q", c.want)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q, want it to contain %q", err, c.want)
			}
		})
	}
	if _, err := ParseFlags([]string{"--name", "h", "--listen", "0.0.0.0:1", "--read-token-file", good}, func(string) string { return "" }, io.Discard); err == nil {
		t.Error("--read-token-file without --token-file accepted")
	}
}

// Strict input: one JSON value per body, a bounded owner header.
func TestStrictRequestBodies(t *testing.T) {
	m, _ := startMain(t)
	for _, body := range []string{`{"size_mib":16} {"size_mib":32}`, `{"size_mib":16}x`, `{"size_mib":16}]`} {
		st, e, b := call(t, "PUT", m.URL()+"/v1/pools/default/volumes/strict-1", testToken, body)
		if st != 400 || e.Code != api.CodeInvalid {
			t.Errorf("body %q: %d %s, want 400", body, st, b)
		}
	}
	if st, _, _ := call(t, "GET", m.URL()+"/v1/pools/default/volumes/strict-1", testToken, ""); st != 404 {
		t.Errorf("a refused body created the volume: %d", st)
	}
	if st, _, b := call(t, "PUT", m.URL()+"/v1/pools/default/volumes/strict-1", testToken, "{\"size_mib\":16}\n"); st != 201 {
		t.Errorf("a trailing newline is whitespace, not data: %d %s", st, b)
	}
}

// A client that sends a method per request cannot grow /metrics: unknown
// methods share one label value.
func TestMetricsLabelsBounded(t *testing.T) {
	m, _ := startMain(t)
	for i := range 50 {
		st, _, _ := call(t, fmt.Sprintf("X%dMETHOD", i), m.URL()+"/v1/host", "", "")
		if st == 200 {
			t.Fatalf("odd method served")
		}
	}
	_, _, b := call(t, "GET", m.URL()+"/metrics", "", "")
	if n := strings.Count(string(b), "METHOD"); n != 0 {
		t.Errorf("/metrics carries %d client-chosen method labels", n)
	}
	if !strings.Contains(string(b), `method="other"`) {
		t.Errorf("/metrics lacks the method=\"other\" series")
	}
}

// A wrong token gets its 401 without the server waiting for the body, and
// a client that trickles a body is cut off by the body read deadline.
func TestSlowClients(t *testing.T) {
	m, _ := startMain(t)
	addr := strings.TrimPrefix(m.URL(), "http://")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "PUT /v1/vms/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong-token-0123456789\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{")
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || !strings.Contains(line, "401") {
		t.Fatalf("wrong token with a pending body: %q %v, want a 401 at once", line, err)
	}
}

// Seed images are the host's: a volume cannot take a seed's name, so it
// can neither overwrite a VM's seed nor delete one in use; and the API
// never returns user data, only its hash.
func TestCloudInitSecrets(t *testing.T) {
	m, _ := startMain(t)
	for _, r := range []struct{ method, path, body string }{
		{"PUT", "", `{"size_mib":1}`}, {"DELETE", "", ""}, {"PATCH", "", `{"size_mib":1}`}, {"GET", "/content", ""},
		{"POST", "/copy", `{"content_url":"http://127.0.0.1:1/x","spec":{"size_mib":1}}`},
	} {
		st, e, b := call(t, r.method, m.URL()+"/v1/pools/default/volumes/web-1-cidata.iso"+r.path, testToken, r.body)
		if st != 400 || e.Code != api.CodeInvalid || !strings.Contains(e.Message, "reserved") {
			t.Errorf("%s %s on a seed-named volume: %d %s, want 400 reserved", r.method, r.path, st, b)
		}
	}
	if st, _, b := call(t, "PUT", m.URL()+"/v1/vms/ci-thief", testToken, `{"vcpu":1,"memory_mib":64,"disks":[{"volume":"web-1-cidata.iso"}]}`); st != 400 {
		t.Errorf("attaching a seed image as a disk: %d %s, want 400", st, b)
	}
	const secret = "#cloud-config\npassword: hunter2\n"
	body, _ := json.Marshal(api.VMSpec{VCPU: 1, MemoryMiB: 64, CloudInit: &api.CloudInit{UserData: secret}})
	if st, _, b := call(t, "PUT", m.URL()+"/v1/vms/ci-1", testToken, string(body)); st != 201 || strings.Contains(string(b), "hunter2") {
		t.Fatalf("PUT VM: %d %s (want 201 without the user data)", st, b)
	}
	for _, p := range []string{"/v1/vms/ci-1", "/v1/vms"} {
		_, _, b := call(t, "GET", m.URL()+p, testToken, "")
		if strings.Contains(string(b), "hunter2") || !strings.Contains(string(b), api.UserDataHash(secret)) {
			t.Errorf("GET %s returns user data, or not its hash: %s", p, b)
		}
	}
}

// The audit log records content reads and the redacted parameters of
// writes that reach out of the host.
func TestAuditParamsRedacted(t *testing.T) {
	m, audit := startMain(t)
	call(t, "PUT", m.URL()+"/v1/pools/default/volumes/aud-1", testToken, `{"size_mib":1,"source_url":"https://user:pw@127.0.0.1:1/img.qcow2?sig=s3cr3t"}`)
	call(t, "POST", m.URL()+"/v1/vms/nope/migrate", testToken, `{"target_host":"b","target_uri":"qemu+tcp://10.0.0.12/system?no_verify=1"}`)
	if st, _, b := call(t, "PUT", m.URL()+"/v1/pools/default/volumes/aud-2", testToken, `{"size_mib":1}`); st != 201 {
		t.Fatalf("PUT: %d %s", st, b)
	}
	call(t, "GET", m.URL()+"/v1/pools/default/volumes/aud-2/content", testToken, "")
	log, _ := os.ReadFile(audit)
	for _, want := range []string{
		`"source_url":"https://127.0.0.1:1/img.qcow2"`,
		`"target_uri":"qemu+tcp://10.0.0.12/system"`,
		`"method":"GET","path":"/v1/pools/default/volumes/aud-2/content"`,
	} {
		if !strings.Contains(string(log), want) {
			t.Errorf("audit log lacks %s:\n%s", want, log)
		}
	}
	for _, secret := range []string{"pw@", "s3cr3t", "no_verify"} {
		if strings.Contains(string(log), secret) {
			t.Errorf("audit log holds %q:\n%s", secret, log)
		}
	}
}

// The request that starts an operation is audited as accepted; how the
// operation ended is audited when it ends.
func TestAuditOperationOutcome(t *testing.T) {
	m, audit := startMain(t)
	if st, _, b := call(t, "PUT", m.URL()+"/v1/pools/default/volumes/aud-op", testToken, `{"size_mib":1,"format":"raw","source_url":"http://127.0.0.1:1/img?sig=s3cr3t"}`); st != 202 {
		t.Fatalf("PUT: %d %s", st, b)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		log, _ := os.ReadFile(audit)
		if strings.Contains(string(log), `"method":"OPERATION"`) {
			s := string(log)
			if !strings.Contains(s, `"path":"download volume/default/aud-op"`) || !strings.Contains(s, `"state":"failed"`) {
				t.Fatalf("operation outcome not audited as a failed download:\n%s", s)
			}
			if strings.Contains(s, "s3cr3t") {
				t.Fatalf("audit log holds the URL's query:\n%s", s)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no operation outcome in the audit log:\n%s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Input libvirt cannot hold is refused with 400 before it reaches libvirt,
// never a 500 and never a silent change (a control character would come
// back as U+FFFD); tabs and newlines round-trip exactly.
func TestStrictVMInput(t *testing.T) {
	m, _ := startMain(t)
	for _, body := range []string{
		`{"vcpu":1,"memory_mib":64,"uuid":"not-a-uuid"}`,
		`{"vcpu":1,"memory_mib":64,"description":"a\u0001b"}`,
		`{"vcpu":1,"memory_mib":64,"description":"a\u001bb"}`,
		`{"vcpu":1,"memory_mib":64,"description":"dos\r\nline"}`,
		`{"vcpu":1,"memory_mib":64,"tags":{"k":"v\u0002"}}`,
		`{"vcpu":1,"memory_mib":64,"tags":{"k\u0007":"v"}}`,
		`{"vcpu":1,"memory_mib":64,"cloud_init":{"meta_data":"x\u0003"}}`,
		`{"vcpu":1,"memory_mib":64,"cloud_init":{"network_config":"\ufffe"}}`,
		`{"vcpu":1,"memory_mib":64,"cpu":{"pinning":["0-"]}}`,
		`{"vcpu":2,"memory_mib":64,"cpu":{"sockets":9223372036854775807,"cores":2}}`,
	} {
		st, e, b := call(t, "PUT", m.URL()+"/v1/vms/strict-vm", testToken, body)
		if st != 400 || e.Code != api.CodeInvalid {
			t.Errorf("%s: %d %s, want 400 invalid", body, st, b)
		}
	}
	if st, _, _ := call(t, "GET", m.URL()+"/v1/vms/strict-vm", testToken, ""); st != 404 {
		t.Errorf("a refused create left the VM: %d", st)
	}
	const desc = "line one\n\tindented\nend <&> \"q\" 'a' é \u2028"
	body, _ := json.Marshal(api.VMSpec{VCPU: 1, MemoryMiB: 64, Description: desc, Tags: map[string]string{"k": "tab\there"}})
	if st, _, b := call(t, "PUT", m.URL()+"/v1/vms/strict-vm", testToken, string(body)); st != 201 {
		t.Fatalf("PUT: %d %s", st, b)
	}
	_, _, b := call(t, "GET", m.URL()+"/v1/vms/strict-vm", testToken, "")
	var vm api.VM
	if err := json.Unmarshal(b, &vm); err != nil || vm.Description != desc || vm.Tags["k"] != "tab\there" {
		t.Errorf("round trip: description %q tags %v (%v), want %q", vm.Description, vm.Tags, err, desc)
	}
}
