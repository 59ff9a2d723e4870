package service_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/client"
	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// blockingImage serves an image whose body stalls after its first bytes
// until release is closed: a download or copy held in flight.
func blockingImage(t *testing.T, size int64, release <-chan struct{}, started chan<- struct{}) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", itoa(size))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(make([]byte, 4096))
		w.(http.Flusher).Flush()
		select {
		case started <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.CopyN(w, zeros{}, size-4096)
	}))
	t.Cleanup(srv.Close)
	return srv
}

type zeros struct{}

func (zeros) Read(b []byte) (int, error) { clear(b); return len(b), nil }

func itoa(n int64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		if n /= 10; n == 0 {
			return string(b[i:])
		}
	}
}

// TestVolumeLockDiscipline: while a volume is read out for another host,
// a delete or resize of it is refused at once with a 409 naming what holds
// it. While it is downloaded or copied into, it does not exist under its
// name at all (the bytes go to a private partial volume): a read or an
// attach finds nothing and a resize is refused, at once. Nothing runs in between or hangs behind
// a transfer; once the transfer ends, the same requests work.
func TestVolumeLockDiscipline(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kvm-hostd process")
	}
	c := harness.Start(t, harness.Options{Hosts: []string{"lk"}, ExtraArgs: []string{"--memory-overcommit", "10"}})
	cl, err := client.New(client.Options{Endpoint: c.Hosts[0].URL, Token: c.Token, RetryMax: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	size := func(n int64) api.VolumeUpdate { return api.VolumeUpdate{SizeMiB: &n} }

	// refusedNow runs fn and wants a prompt 409.
	refusedNow := func(what string, fn func(ctx context.Context) error) {
		t.Helper()
		t0 := time.Now()
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		err := fn(ctx)
		if !api.IsCode(err, api.CodeConflict) {
			t.Errorf("%s: %v, want 409", what, err)
		} else {
			t.Logf("%s: %v", what, err)
		}
		if d := time.Since(t0); d > 5*time.Second {
			t.Errorf("%s took %s: it waited for the transfer", what, d)
		}
	}
	// absentNow runs fn and wants a prompt 404: the volume being filled
	// is not there under its name.
	absentNow := func(what string, fn func(ctx context.Context) error) {
		t.Helper()
		t0 := time.Now()
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := fn(ctx); !api.IsNotFound(err) {
			t.Errorf("%s: %v, want 404 (not there until complete)", what, err)
		}
		if d := time.Since(t0); d > 5*time.Second {
			t.Errorf("%s took %s: it waited for the transfer", what, d)
		}
	}
	waitStarted := func(started <-chan struct{}) {
		t.Helper()
		select {
		case <-started:
		case <-ctx.Done():
			t.Fatal("the transfer never reached the image server")
		}
	}

	// 1. A download held open.
	release, started := make(chan struct{}), make(chan struct{}, 1)
	img := blockingImage(t, 32<<20, release, started)
	done := make(chan error, 1)
	go func() {
		_, err := cl.PutVolume(ctx, "default", "lk-dl", api.VolumeSpec{SourceURL: img.URL + "/img.qcow2"})
		done <- err
	}()
	waitStarted(started)
	absentNow("read during download", func(ctx context.Context) error {
		_, err := cl.GetVolume(ctx, "default", "lk-dl")
		return err
	})
	refusedNow("resize during download", func(ctx context.Context) error {
		_, err := cl.UpdateVolume(ctx, "default", "lk-dl", size(64))
		return err
	})
	absentNow("attach during download", func(ctx context.Context) error {
		_, err := cl.PutVM(ctx, "lk-vm", api.VMSpec{VCPU: 1, MemoryMiB: 64, Disks: []api.VMDisk{{Pool: "default", Volume: "lk-dl"}}})
		return err
	})
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("download: %v", err)
	}

	// 2. The volume's content read out for another host, the reader
	// stalled: the read holds the volume.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, cl.ContentURL("default", "lk-dl"), nil)
	req.Header.Set("Authorization", "Bearer "+c.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET content: %v %v", resp, err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	refusedNow("delete during a content read", func(ctx context.Context) error { return cl.DeleteVolume(ctx, "default", "lk-dl") })
	refusedNow("resize during a content read", func(ctx context.Context) error {
		_, err := cl.UpdateVolume(ctx, "default", "lk-dl", size(64))
		return err
	})
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || n+4096 != 32<<20 {
		t.Fatalf("content read: %d bytes, %v; want the whole volume", n+4096, err)
	}

	// 3. A copy into a volume held open.
	release2, started2 := make(chan struct{}), make(chan struct{}, 1)
	src := blockingImage(t, 8<<20, release2, started2)
	go func() {
		_, err := cl.CopyVolume(ctx, "default", "lk-cp", api.VolumeCopyRequest{ContentURL: src.URL + "/content", Token: "x",
			Spec: api.VolumeSpec{SizeMiB: 8, Format: api.FormatRaw}}, "lk-cp-1")
		done <- err
	}()
	waitStarted(started2)
	refusedNow("resize during copy", func(ctx context.Context) error {
		_, err := cl.UpdateVolume(ctx, "default", "lk-cp", size(16))
		return err
	})
	close(release2)
	if err := <-done; err != nil {
		t.Fatalf("copy: %v", err)
	}

	// Once nothing holds them, the same requests work.
	if _, err := cl.UpdateVolume(ctx, "default", "lk-cp", size(16)); err != nil && !api.IsCode(err, api.CodeUnsupported) {
		t.Errorf("resize after copy: %v", err)
	}
	for _, v := range []string{"lk-dl", "lk-cp"} {
		if err := cl.DeleteVolume(ctx, "default", v); err != nil {
			t.Errorf("delete %s after its transfer: %v", v, err)
		}
	}
	if vols, err := cl.ListVolumes(ctx, "default"); err != nil {
		t.Fatal(err)
	} else {
		for _, v := range vols {
			if strings.HasPrefix(v.Name, "lk-") {
				t.Errorf("volume %s left", v.Name)
			}
		}
	}
}
