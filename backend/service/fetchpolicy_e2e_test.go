package service_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// kvm-hostd refuses to fetch from loopback, link-local and its own
// addresses unless --fetch-allow lists them: checked on the address it
// connects to, and on every redirect. A refused fetch sends no request and leaves no volume.
func TestFetchAllowDefaultDeny(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kvm-hostd process")
	}
	var hits atomic.Int64
	image := []byte("an image that must not be fetched")
	// 127.0.0.2 is loopback too, but not in the allow-list below.
	inner, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	innerSrv := &httptest.Server{Listener: inner, Config: &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = w.Write(image)
	})}}
	innerSrv.Start()
	defer innerSrv.Close()
	outer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/redirect" {
			http.Redirect(w, r, innerSrv.URL+"/img", http.StatusFound)
			return
		}
		_, _ = w.Write(image)
	}))
	defer outer.Close()

	// Only 127.0.0.1 may be fetched from (the last --fetch-allow wins over
	// the harness's own).
	c := harness.Start(t, harness.Options{Hosts: []string{"ssrf"}, ExtraArgs: []string{"--fetch-allow", "127.0.0.1/32"}})
	cl, err := client.New(client.Options{Endpoint: c.Hosts[0].URL, Token: c.Token, RetryMax: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	for name, url := range map[string]string{
		"ssrf-loop":     innerSrv.URL + "/img",                      // loopback, not allowed
		"ssrf-redirect": outer.URL + "/redirect",                    // allowed, redirects to a refused address
		"ssrf-meta":     "http://169.254.169.254/latest/meta-data/", // cloud metadata
	} {
		_, err := cl.PutVolume(ctx, "default", name, api.VolumeSpec{SourceURL: url, Format: api.FormatRaw})
		if err == nil || !strings.Contains(err.Error(), "not allowed") {
			t.Errorf("%s from %s: %v, want a refused fetch", name, url, err)
		}
		if _, err := cl.GetVolume(ctx, "default", name); !api.IsNotFound(err) {
			t.Errorf("%s: a refused fetch left a volume (err %v)", name, err)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the refused server got %d requests", n)
	}
	// The allowed address works.
	v, err := cl.PutVolume(ctx, "default", "ssrf-ok", api.VolumeSpec{SourceURL: outer.URL + "/img", Format: api.FormatRaw})
	if err != nil || v.Name != "ssrf-ok" {
		t.Fatalf("allowed fetch: %+v, %v", v, err)
	}
}

// Loopback in its other spellings, and names that resolve to it, are
// refused like 127.0.0.1 when nothing local is allowed: the check is on the
// address connected to, not on the URL's text.
func TestFetchLoopbackSpellings(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kvm-hostd process")
	}
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = w.Write([]byte("secret"))
	}))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))
	// Nothing local allowed (192.0.2.0/24 is TEST-NET-1).
	c := harness.Start(t, harness.Options{Hosts: []string{"ssrf2"}, ExtraArgs: []string{"--fetch-allow", "192.0.2.1/32"}})
	cl, err := client.New(client.Options{Endpoint: c.Hosts[0].URL, Token: c.Token, RetryMax: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i, host := range []string{
		"127.0.0.1", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]", "127.0.0.1.nip.io",
	} {
		name := "ssrf-spell-" + strconv.Itoa(i)
		_, err := cl.PutVolume(ctx, "default", name, api.VolumeSpec{SourceURL: "http://" + host + ":" + port + "/img", Format: api.FormatRaw})
		if err == nil {
			t.Errorf("http://%s:%s fetched", host, port)
		}
		if _, err := cl.GetVolume(ctx, "default", name); !api.IsNotFound(err) {
			t.Errorf("%s: a refused fetch left a volume (err %v)", host, err)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("the loopback server got %d requests", n)
	}
}
