package hostd

import (
	"context"
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
	"testing"
	"time"
)

// writeSelfSigned writes a self-signed certificate for 127.0.0.1 with the
// given serial to certFile/keyFile.
func writeSelfSigned(t *testing.T, certFile, keyFile string, serial int64) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: "kvm-hostd-test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// ReloadTLS (what SIGHUP calls) serves a renewed certificate to new
// connections while an open connection keeps working; a broken file keeps
// the current certificate.
func TestTLSReloadKeepsConnections(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeSelfSigned(t, certFile, keyFile, 1)
	m, _ := startMain(t, "--tls-cert", certFile, "--tls-key", keyFile)

	// Trust nothing but look at what the server presents.
	newClient := func() *http.Client {
		return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // the test inspects the served certificate itself
	}
	get := func(c *http.Client) int64 {
		t.Helper()
		req, _ := http.NewRequestWithContext(context.Background(), "GET", m.URL()+"/v1/host", nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("GET /v1/host: %d", resp.StatusCode)
		}
		return resp.TLS.PeerCertificates[0].SerialNumber.Int64()
	}
	old := newClient()
	if s := get(old); s != 1 {
		t.Fatalf("serial %d, want 1", s)
	}

	writeSelfSigned(t, certFile, keyFile, 2)
	if err := m.ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	// The open keep-alive connection still serves, with its certificate.
	if s := get(old); s != 1 {
		t.Errorf("open connection after reload: serial %d, want 1 (same connection)", s)
	}
	if s := get(newClient()); s != 2 {
		t.Errorf("new connection after reload: serial %d, want 2", s)
	}

	// A broken renewal is refused and the current certificate stays.
	if err := os.WriteFile(certFile, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.ReloadTLS(); err == nil {
		t.Error("reloading a broken certificate succeeded")
	}
	if s := get(newClient()); s != 2 {
		t.Errorf("after a failed reload: serial %d, want 2", s)
	}
}
