package service_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

// A fetched image becomes a volume only if its header is what was asked
// for: a qcow2 served as "raw", a qcow2 naming a host file as its backing
// file (even when qcow2 was asked for), or a raw file asked for as qcow2
// are refused and deleted, on the real stack where QEMU would open them.
func TestFetchedImagesInspected(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kvm-hostd process")
	}
	realstack.Require(t, "qemu-img")
	dir := t.TempDir()
	img := func(name string, args ...string) string {
		p := filepath.Join(dir, name)
		if out, err := exec.Command("qemu-img", append([]string{"create", "-q"}, append(args[:len(args)-1], p, args[len(args)-1])...)...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img create %s: %v %s", name, err, out)
		}
		return p
	}
	img("plain.qcow2", "-f", "qcow2", "1M")
	img("evil.qcow2", "-f", "qcow2", "-F", "raw", "-b", "/etc/hostname", "1M")
	img("plain.raw", "-f", "raw", "1M")
	img("datafile.qcow2", "-f", "qcow2", "-o", "data_file="+filepath.Join(dir, "external.raw"), "1M")
	img("disguised.vmdk", "-f", "vmdk", "1M")
	srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
	defer srv.Close()

	c := harness.Start(t, harness.RealOptions(t, harness.Options{Hosts: []string{"insp"}}))
	cl, err := client.New(client.Options{Endpoint: c.Hosts[0].URL, Token: c.Token, RetryMax: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	suffix := time.Now().Format("150405")
	cases := []struct {
		name, file, format, refusal string
	}{
		{"insp-qcow2-as-raw", "plain.qcow2", api.FormatRaw, "not the requested raw"},
		{"insp-backing", "evil.qcow2", api.FormatQCOW2, "backing file (/etc/hostname)"},
		{"insp-backing-as-raw", "evil.qcow2", api.FormatRaw, "not the requested raw"},
		{"insp-raw-as-qcow2", "plain.raw", api.FormatQCOW2, "not the requested qcow2"},
		{"insp-data-file", "datafile.qcow2", api.FormatQCOW2, "external data file"},
		{"insp-vmdk-as-raw", "disguised.vmdk", api.FormatRaw, "the image is vmdk"},
		{"insp-ok-qcow2", "plain.qcow2", api.FormatQCOW2, ""},
		{"insp-ok-raw", "plain.raw", api.FormatRaw, ""},
	}
	for _, tc := range cases {
		name := tc.name + "-" + suffix
		_, err := cl.PutVolume(ctx, "default", name, api.VolumeSpec{SourceURL: srv.URL + "/" + tc.file, Format: tc.format})
		if tc.refusal == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			if err := cl.DeleteVolume(ctx, "default", name); err != nil {
				t.Errorf("delete %s: %v", name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.refusal) {
			t.Errorf("%s: %v, want a refusal containing %q", tc.name, err, tc.refusal)
		}
		if _, err := cl.GetVolume(ctx, "default", name); !api.IsNotFound(err) {
			t.Errorf("%s: refused image left a volume (err %v)", tc.name, err)
		}
		if m, _ := filepath.Glob(filepath.Join(realstack.TestPoolRoot, "pool", "*"+name+"*")); len(m) != 0 {
			t.Errorf("%s: files left in the pool: %v", tc.name, m)
		}
	}
}
