package hostd

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue signs a leaf certificate for a server (on 127.0.0.1) or a client and
// returns it and its key in PEM.
func (ca *testCA) issue(t *testing.T, cn string, usage x509.ExtKeyUsage) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	if usage == x509.ExtKeyUsageServerAuth {
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func writeFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestMutualTLS starts the kvm-hostd binary with --tls-cert, --tls-key and
// --client-ca, as an operator would, and makes real TLS handshakes: a client
// certificate from the right CA gets in (200 on an authenticated GET), one
// from another CA and none at all fail the handshake.
func TestMutualTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kvm-hostd process")
	}
	dir := t.TempDir()
	serverCA, clientCA, wrongCA := newTestCA(t, "server CA"), newTestCA(t, "client CA"), newTestCA(t, "wrong CA")
	srvCert, srvKey := serverCA.issue(t, "kvm-hostd", x509.ExtKeyUsageServerAuth)
	goodCert, goodKey := clientCA.issue(t, "terraform", x509.ExtKeyUsageClientAuth)
	badCert, badKey := wrongCA.issue(t, "terraform", x509.ExtKeyUsageClientAuth)

	c := harness.Start(t, harness.Options{Hosts: []string{"tls"}, ExtraArgs: []string{
		"--tls-cert", writeFile(t, dir, "server.pem", srvCert),
		"--tls-key", writeFile(t, dir, "server-key.pem", srvKey),
		"--client-ca", writeFile(t, dir, "client-ca.pem", clientCA.pem),
	}})
	url := c.Hosts[0].URL
	if !strings.HasPrefix(url, "https://127.0.0.1:") {
		t.Fatalf("kvm-hostd listens on %s, want https", url)
	}

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(serverCA.pem)
	get := func(certPEM, keyPEM []byte, path, token string) (*http.Response, error) {
		t.Helper()
		tc := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
		if certPEM != nil {
			pair, err := tls.X509KeyPair(certPEM, keyPEM)
			if err != nil {
				t.Fatal(err)
			}
			// Sent whatever CAs the server names: Go's default would
			// withhold a certificate of another CA, and the server must be
			// the one that refuses it.
			tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
		}
		cl := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
		defer cl.CloseIdleConnections()
		req, err := http.NewRequest("GET", url+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := cl.Do(req)
		if err != nil {
			return nil, err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		resp.Body = io.NopCloser(strings.NewReader(string(body)))
		return resp, nil
	}

	// The right CA: the handshake succeeds and the authenticated GET answers.
	resp, err := get(goodCert, goodKey, "/v1/host", c.Token)
	if err != nil {
		t.Fatalf("client certificate from the right CA: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"name":"tls"`) {
		t.Fatalf("GET /v1/host with the right certificate: %d %s", resp.StatusCode, body)
	}
	if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 || resp.TLS.PeerCertificates[0].Subject.CommonName != "kvm-hostd" {
		t.Fatalf("not a verified TLS connection to kvm-hostd: %+v", resp.TLS)
	}
	// The certificate does not replace the token.
	if resp, err := get(goodCert, goodKey, "/v1/host", ""); err != nil || resp.StatusCode != 401 {
		t.Errorf("right certificate, no token: %v %v, want 401", resp, err)
	}

	// A certificate from another CA, and none at all: no handshake, no answer.
	for _, cse := range []struct {
		name          string
		cert, key     []byte
		wantAlertText string
	}{
		{"client certificate from a wrong CA", badCert, badKey, "unknown certificate authority"},
		{"no client certificate", nil, nil, "certificate required"},
	} {
		resp, err := get(cse.cert, cse.key, "/healthz", c.Token)
		if err == nil {
			t.Errorf("%s: got HTTP %d, want a failed handshake", cse.name, resp.StatusCode)
			continue
		}
		// The server's alert: unknown_ca, or certificate_required.
		if !strings.Contains(err.Error(), "remote error: tls: "+cse.wantAlertText) {
			t.Errorf("%s: %v, want the server's TLS alert %q", cse.name, err, cse.wantAlertText)
		}
		t.Logf("%s: %v", cse.name, err)
	}
	// The server refused them itself, said why, and still serves.
	if resp, err := get(goodCert, goodKey, "/healthz", ""); err != nil || resp.StatusCode != 200 {
		t.Fatalf("after refused handshakes: %v %v", resp, err)
	}
	log := c.Hosts[0].Log()
	for _, want := range []string{"certificate signed by unknown authority", "client didn't provide a certificate"} {
		if !strings.Contains(log, want) {
			t.Errorf("kvm-hostd log lacks %q:\n%s", want, log)
		}
	}
}
