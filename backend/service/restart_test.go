package service_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// slowImage serves a 2 MiB image. While slow is set it sends the first
// half and then stalls until the client goes away, so a transfer is caught
// in the middle; started receives a value once per stalled request.
type slowImage struct {
	data    []byte
	slow    atomic.Bool
	started chan struct{}
}

func newSlowImage() *slowImage {
	data := make([]byte, 2<<20)
	for i := range data {
		data[i] = byte(i*7 + i/4096)
	}
	s := &slowImage{data: data, started: make(chan struct{}, 16)}
	s.slow.Store(true)
	return s
}

func (s *slowImage) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Length", fmt.Sprint(len(s.data)))
	if !s.slow.Load() {
		_, _ = w.Write(s.data)
		return
	}
	_, _ = w.Write(s.data[:len(s.data)/2])
	w.(http.Flusher).Flush()
	s.started <- struct{}{}
	<-r.Context().Done()
}

func (s *slowImage) checksum() string { return fmt.Sprintf("sha256:%x", sha256.Sum256(s.data)) }

// startFill starts a download (PUT) or a copy (POST .../copy) over raw HTTP
// and returns its operation, without waiting for it.
func startFill(t *testing.T, c *harness.Cluster, h *harness.Host, kind, name string, img *slowImage, imgURL string) *api.Operation {
	t.Helper()
	method, path := http.MethodPut, "/v1/pools/default/volumes/"+name
	var body any = api.VolumeSpec{Format: api.FormatRaw, SourceURL: imgURL, SourceChecksum: img.checksum()}
	if kind == "copy" {
		method, path = http.MethodPost, path+"/copy"
		body = api.VolumeCopyRequest{ContentURL: imgURL, Token: "source-token", Spec: api.VolumeSpec{Format: api.FormatRaw, SizeMiB: 2}}
	}
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, h.URL+path, bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+c.Token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		t.Fatalf("%s %s: %s %s", method, path, resp.Status, raw)
	}
	if kind == "copy" {
		var op api.Operation
		if err := json.Unmarshal(raw, &op); err != nil {
			t.Fatal(err)
		}
		return &op
	}
	var v api.Volume
	if err := json.Unmarshal(raw, &v); err != nil || v.Operation == nil {
		t.Fatalf("PUT %s: %s (%v)", path, raw, err)
	}
	return v.Operation
}

// TestFillInterruptedByRestart kills kvm-hostd (kill -9, and SIGTERM with a
// short --shutdown-timeout) in the middle of a download and of a copy fed
// by a stalling HTTP server. After the restart the volume does not exist
// under its name (not listed, not readable), no partial file is left in the
// pool, polling the old operation says it was lost by the restart, and
// creating the volume again gives it complete (checksum verified, content
// equal on the real stack).
func TestFillInterruptedByRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts kvm-hostd processes")
	}
	for _, stack := range []string{"embedded", "real"} {
		t.Run(stack, func(t *testing.T) {
			opts := harness.Options{Hosts: []string{"rs-" + stack[:4]}, ExtraArgs: []string{"--shutdown-timeout", "1s"}}
			if stack == "real" {
				opts = harness.RealOptions(t, opts)
			}
			c := harness.Start(t, opts)
			h := c.Hosts[0]
			img := newSlowImage()
			srv := httptest.NewServer(img)
			defer srv.Close()
			poolDir := filepath.Join("/var/lib/kvm-hostd-test", "pool")
			for _, kind := range []string{"download", "copy"} {
				for _, stop := range []string{"kill", "term"} {
					name := fmt.Sprintf("rs-%s-%s-%d", kind, stop, time.Now().UnixNano()%1e6)
					img.slow.Store(true)
					op := startFill(t, c, h, kind, name, img, srv.URL+"/img?sig=secret")
					select {
					case <-img.started:
					case <-time.After(30 * time.Second):
						t.Fatalf("%s %s: the transfer never started", kind, name)
					}
					if stack == "real" {
						if m, _ := filepath.Glob(filepath.Join(poolDir, ".partial-"+name+"-*")); len(m) != 1 {
							t.Errorf("%s: partial files while filling: %v", name, m)
						}
						if _, err := os.Stat(filepath.Join(poolDir, name)); !os.IsNotExist(err) {
							t.Errorf("%s exists under its name while being filled: %v", name, err)
						}
					}
					var err error
					if stop == "kill" {
						err = h.Kill()
					} else {
						err = h.Stop()
					}
					if err != nil {
						t.Fatal(err)
					}
					if stop == "term" && !strings.Contains(h.Log(), "cancelled running operations at shutdown") {
						t.Errorf("SIGTERM: the log does not say the running %s was cancelled", kind)
					}
					if err := h.Start(); err != nil {
						t.Fatal(err)
					}
					cl, err := client.New(client.Options{Endpoint: h.URL, Token: c.Token, RetryMax: 1})
					if err != nil {
						t.Fatal(err)
					}
					ctx := context.Background()
					if _, err := cl.GetOperation(ctx, op.ID); !api.IsCode(err, api.CodeOperationLost) || client.StatusOf(err) != http.StatusNotFound {
						t.Errorf("%s/%s: polling the operation after the restart: %v, want 404 %s", kind, stop, err, api.CodeOperationLost)
					}
					if _, err := cl.GetVolume(ctx, "default", name); !api.IsNotFound(err) {
						t.Errorf("%s/%s: the interrupted volume is visible after the restart: %v", kind, stop, err)
					}
					vols, err := cl.ListVolumes(ctx, "default")
					if err != nil {
						t.Fatal(err)
					}
					for _, v := range vols {
						if strings.Contains(v.Name, name) {
							t.Errorf("%s/%s: listed after the restart: %s", kind, stop, v.Name)
						}
					}
					if stack == "real" {
						if m, _ := filepath.Glob(filepath.Join(poolDir, ".partial-"+name+"-*")); len(m) != 0 {
							t.Errorf("%s/%s: partial files left after the restart: %v", kind, stop, m)
						}
					}

					// Re-applying converges: the volume is created complete.
					img.slow.Store(false)
					if kind == "download" {
						_, err = cl.PutVolume(ctx, "default", name, api.VolumeSpec{Format: api.FormatRaw, SourceURL: srv.URL + "/img?sig=secret", SourceChecksum: img.checksum()})
					} else {
						_, err = cl.CopyVolume(ctx, "default", name, api.VolumeCopyRequest{ContentURL: srv.URL + "/img", Token: "t",
							Spec: api.VolumeSpec{Format: api.FormatRaw, SizeMiB: 2}}, "")
					}
					if err != nil {
						t.Fatalf("%s/%s: again after the restart: %v", kind, stop, err)
					}
					v, err := cl.GetVolume(ctx, "default", name)
					if err != nil {
						t.Fatalf("%s/%s: after re-create: %v", kind, stop, err)
					}
					if stack == "real" {
						got, err := os.ReadFile(v.Path)
						if err != nil || !bytes.Equal(got, img.data) {
							t.Errorf("%s/%s: content after re-create: %d bytes, %v", kind, stop, len(got), err)
						}
					}
					if err := cl.DeleteVolume(ctx, "default", name); err != nil {
						t.Error(err)
					}
				}
			}
		})
	}
}

// TestSIGTERMWaitsForOperations stops kvm-hostd with SIGTERM while a
// download runs that finishes within --shutdown-timeout: the process waits
// for it, so after the restart the volume is there, complete.
func TestSIGTERMWaitsForOperations(t *testing.T) {
	if testing.Short() {
		t.Skip("starts kvm-hostd processes")
	}
	c := harness.Start(t, harness.Options{Hosts: []string{"term-wait"}, ExtraArgs: []string{"--shutdown-timeout", "30s"}})
	h := c.Hosts[0]
	img := newSlowImage()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(len(img.data)))
		_, _ = w.Write(img.data[:len(img.data)/2])
		w.(http.Flusher).Flush()
		img.started <- struct{}{}
		<-release
		_, _ = w.Write(img.data[len(img.data)/2:])
	}))
	defer srv.Close()
	op := startFill(t, c, h, "download", "term-wait-vol", img, srv.URL+"/img")
	<-img.started
	stopped := make(chan error, 1)
	go func() { stopped <- h.Stop() }()
	time.Sleep(time.Second) // SIGTERM is in; the download still runs
	close(release)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	log := h.Log()
	if !strings.Contains(log, "download done") || strings.Contains(log, "cancelled running operations") {
		t.Fatalf("SIGTERM did not wait for the download:\n%s", log)
	}
	if err := h.Start(); err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(client.Options{Endpoint: h.URL, Token: c.Token, RetryMax: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.GetOperation(context.Background(), op.ID); !api.IsCode(err, api.CodeOperationLost) {
		t.Errorf("operation from before the restart: %v", err)
	}
	// The embedded default keeps no volumes across a restart; what counts
	// is that the download finished before the process exited.
}

// TestDeleteCancelsFill deletes a volume while its download stalls: the
// DELETE stops the transfer and returns once the partial volume is gone,
// the operation ends failed, and the volume can be created again.
func TestDeleteCancelsFill(t *testing.T) {
	if testing.Short() {
		t.Skip("starts kvm-hostd processes")
	}
	c := harness.Start(t, harness.Options{Hosts: []string{"del-fill"}})
	h := c.Hosts[0]
	img := newSlowImage()
	srv := httptest.NewServer(img)
	defer srv.Close()
	op := startFill(t, c, h, "download", "del-fill-vol", img, srv.URL+"/img")
	<-img.started
	cl, err := client.New(client.Options{Endpoint: h.URL, Token: c.Token, RetryMax: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := cl.DeleteVolume(ctx, "default", "del-fill-vol"); err != nil {
		t.Fatalf("DELETE of a volume being downloaded: %v", err)
	}
	got, err := cl.GetOperation(ctx, op.ID)
	if err != nil || got.State != api.OpFailed {
		t.Fatalf("operation after DELETE: %+v, %v", got, err)
	}
	if _, err := cl.GetVolume(ctx, "default", "del-fill-vol"); !api.IsNotFound(err) {
		t.Fatalf("volume after DELETE: %v", err)
	}
	img.slow.Store(false)
	if _, err := cl.PutVolume(ctx, "default", "del-fill-vol", api.VolumeSpec{Format: api.FormatRaw, SourceURL: srv.URL + "/img", SourceChecksum: img.checksum()}); err != nil {
		t.Fatalf("create again: %v", err)
	}
}
