package hypervisor

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"libvirt.org/go/libvirt"

	"github.com/kvmfleet/terraform-provider-kvm/backend/service"
	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
	"github.com/kvmfleet/terraform-provider-kvm/internal/realstack"
)

// Real-libvirt tests run only with KVM_TEST_LIBVIRT_URI (e.g. qemu:///system).
const realPoolRoot = realstack.TestPoolRoot

func openReal(t *testing.T) (*Libvirt, string) {
	t.Helper()
	uri := realstack.RequireLibvirtURI(t)
	ctx := context.Background()
	// Registered first, so it runs last: the last user of the tests' pools
	// removes whatever is left in them.
	release, err := realstack.UseTestPool(ctx, uri)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := release(); err != nil {
			t.Error(err)
		}
	})
	l, err := Open(uri, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatal(err)
	}
	pool := uniq("kvmtest")
	dir := filepath.Join(realPoolRoot, pool)
	if err := l.EnsurePool(ctx, pool, dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Remove everything the test made: domains using the pool, its
		// volumes, the pool and its directory.
		if vols, err := l.ListVolumes(ctx, pool); err == nil {
			for _, v := range vols {
				for _, u := range v.UsedBy {
					_ = l.DeleteVM(ctx, u, 0)
				}
			}
			for range 3 { // children before bases
				vols, _ = l.ListVolumes(ctx, pool)
				for _, v := range vols {
					if len(v.Children) == 0 {
						_ = l.DeleteVolume(ctx, pool, v.Name)
					}
				}
			}
		}
		_ = l.do(ctx, func(c *libvirt.Connect) error {
			p, err := c.LookupStoragePoolByName(pool)
			if err != nil {
				return err
			}
			defer p.Free()
			_ = p.Destroy()
			return p.Undefine()
		})
		_ = os.RemoveAll(dir)
		_ = l.Close()
	})
	return l, pool
}

func qemuImgSize(t *testing.T, path string) string {
	out, err := exec.Command("qemu-img", "info", "-U", path).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img info: %v %s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "virtual size:") {
			return line
		}
	}
	return string(out)
}

func TestRealLifecycle(t *testing.T) {
	l, pool := openReal(t)
	ctx := context.Background()
	t.Logf("domain type %s", l.virtType)

	base, clone, data := uniq("base"), uniq("clone"), uniq("data")
	if _, err := l.CreateVolume(ctx, pool, base, api.VolumeSpec{SizeMiB: 2048}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	cv, err := l.CreateVolume(ctx, pool, clone, api.VolumeSpec{SizeMiB: 64, BaseVolume: base,
		SourceURL: "https://example.invalid/img.qcow2", IOTune: &api.IOTune{ReadIOPSSec: 500}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("linked clone: %v", time.Since(t0))
	if cv.BaseVolume != base || cv.SizeMiB != 2048 || cv.SourceURL == "" || cv.IOTune == nil {
		t.Fatalf("clone: %+v", cv)
	}
	if _, err := l.CreateVolume(ctx, pool, data, api.VolumeSpec{SizeMiB: 32, Format: "qcow2"}); err != nil {
		t.Fatal(err)
	}
	// Upload a small raw image into the data volume through a stream.
	raw := uniq("raw")
	if _, err := l.CreateVolume(ctx, pool, raw, api.VolumeSpec{SizeMiB: 1, Format: "raw"}); err != nil {
		t.Fatal(err)
	}
	if err := l.WriteVolume(ctx, pool, raw, strings.NewReader(strings.Repeat("k", 4096)), 4096); err != nil {
		t.Fatal(err)
	}

	to := int64(1)
	name := uniq("vm")
	spec := api.VMSpec{VCPU: 1, MemoryMiB: 64, MaxMemoryMiB: 128, Running: true, Autostart: true,
		Disks:              []api.VMDisk{{Pool: pool, Volume: clone}, {Pool: pool, Volume: data}},
		CloudInit:          &api.CloudInit{UserData: "#cloud-config\n", NetworkConfig: "version: 2\n"},
		Description:        `real <&"'>`,
		Tags:               map[string]string{"k": "v"},
		ShutdownTimeoutSec: &to}
	t0 = time.Now()
	vm, err := l.CreateVM(ctx, name, spec, service.VMMeta{Owner: "o"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("create+start 64 MiB domain: %v", time.Since(t0))
	if vm.State != api.StateRunning || len(vm.Disks) != 2 || vm.Disks[1].Target != "vdb" || vm.Description != spec.Description || vm.CloudInit == nil {
		t.Fatalf("vm: %+v", vm)
	}
	iso := filepath.Join(realPoolRoot, pool, name+"-cidata.iso")
	if _, err := os.Stat(iso); err != nil {
		t.Fatalf("seed ISO: %v", err)
	}
	if users, _, _ := l.VolumeUsage(ctx, pool, clone); len(users) != 1 || users[0] != name {
		t.Fatalf("used by: %v", users)
	}

	// Online grow through the running domain.
	t0 = time.Now()
	if err := l.ResizeVolume(ctx, pool, data, 96); err != nil {
		t.Fatal(err)
	}
	t.Logf("online resize: %v", time.Since(t0))
	dv, _ := l.GetVolume(ctx, pool, data)
	if dv.SizeMiB != 96 {
		t.Fatalf("size after grow: %d", dv.SizeMiB)
	}
	if s := qemuImgSize(t, dv.Path); !strings.Contains(s, "96 MiB") {
		t.Fatalf("qemu-img: %s", s)
	}
	if err := l.SetVolumeIOTune(ctx, pool, data, &api.IOTune{WriteBytesSec: 10 << 20}); err != nil {
		t.Fatal(err)
	}

	// Live: memory within max; restart: vCPUs.
	spec.MemoryMiB = 100
	if r, err := l.UpdateVM(ctx, name, spec); err != nil || r {
		t.Fatalf("live update: %v %v", r, err)
	}
	if vm, _ = l.GetVM(ctx, name); vm.MemoryMiB != 100 {
		t.Fatalf("memory: %d", vm.MemoryMiB)
	}
	spec.VCPU = 2
	t0 = time.Now()
	if r, err := l.UpdateVM(ctx, name, spec); err != nil || !r {
		t.Fatalf("restart update: %v %v", r, err)
	}
	t.Logf("restart update (1 s ACPI timeout, guest has no OS): %v", time.Since(t0))
	if vm, _ = l.GetVM(ctx, name); vm.VCPU != 2 || vm.State != api.StateRunning {
		t.Fatalf("after restart: %+v", vm)
	}

	// Snapshots: a running domain's include its memory (one without is
	// refused: QEMU cannot take it), a stopped domain's are of its disks;
	// what the API says is what libvirt stored.
	_, err = l.CreateSnapshot(ctx, name, uniq("snap"), api.SnapshotSpec{})
	mustCode(t, err, api.CodeInvalid)
	for _, mem := range []bool{true, false} {
		if !mem {
			stopVM(t, l, name)
		}
		sn := uniq("snap")
		t0 = time.Now()
		s, err := l.CreateSnapshot(ctx, name, sn, api.SnapshotSpec{Description: "d <&>", IncludeMemory: mem})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("snapshot (memory=%v): %v", mem, time.Since(t0))
		if s.IncludeMemory != mem || s.Description != "d <&>" {
			t.Fatalf("snapshot: %+v", s)
		}
		checkSnapshotMemory(t, l, name, sn, mem)
		t0 = time.Now()
		if err := l.RevertSnapshot(ctx, name, sn); err != nil {
			t.Fatal(err)
		}
		t.Logf("revert (memory=%v): %v", mem, time.Since(t0))
		want := api.StateShutoff // a disk snapshot was taken of a stopped VM
		if mem {
			want = api.StateRunning
		}
		if vm, _ = l.GetVM(ctx, name); vm.State != want {
			t.Fatalf("state after revert (memory=%v): %s, want %s", mem, vm.State, want)
		}
		if s, _ = l.GetSnapshot(ctx, name, sn); s.IncludeMemory != mem || !s.Current {
			t.Fatalf("after revert: %+v", s)
		}
		if err := l.DeleteSnapshot(ctx, name, sn); err != nil {
			t.Fatal(err)
		}
	}

	t0 = time.Now()
	if err := l.DeleteVM(ctx, name, time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("delete (1 s ACPI timeout): %v", time.Since(t0))
	if _, err := os.Stat(iso); !os.IsNotExist(err) {
		t.Fatalf("seed ISO left: %v", err)
	}
	for _, v := range []string{base, clone, data} {
		if _, err := l.GetVolume(ctx, pool, v); err != nil {
			t.Fatalf("volume %s after VM delete: %v", v, err)
		}
	}
}

// TestRealVolumeReadWriteRoundTrip streams real bytes out of one volume
// (ReadVolume, StorageVolDownload) and into another (WriteVolume,
// StorageVolUpload), as a detached disk's move between hosts does, for a
// raw volume and for a qcow2 linked clone (whose overlay keeps its backing
// reference).
func TestRealVolumeReadWriteRoundTrip(t *testing.T) {
	l, pool := openReal(t)
	ctx := context.Background()

	// Raw: a non-trivial pattern over a whole 2 MiB volume.
	pattern := make([]byte, 2*mib)
	for i := range pattern {
		pattern[i] = byte(i*7 + i/4099)
	}
	src, dst := uniq("src"), uniq("dst")
	for _, n := range []string{src, dst} {
		if _, err := l.CreateVolume(ctx, pool, n, api.VolumeSpec{SizeMiB: 2, Format: api.FormatRaw}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.WriteVolume(ctx, pool, src, bytes.NewReader(pattern), int64(len(pattern))); err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	readErr := make(chan error, 1)
	go func() {
		n, err := l.ReadVolume(ctx, pool, src, pw)
		if err == nil && n != int64(len(pattern)) {
			err = fmt.Errorf("ReadVolume returned %d bytes, want %d", n, len(pattern))
		}
		pw.CloseWithError(err)
		readErr <- err
	}()
	if err := l.WriteVolume(ctx, pool, dst, pr, -1); err != nil {
		t.Fatal(err)
	}
	if err := <-readErr; err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	if _, err := l.ReadVolume(ctx, pool, dst, &got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), pattern) {
		t.Fatalf("copied raw volume differs: %d bytes read back, want %d equal bytes", got.Len(), len(pattern))
	}
	if v, err := l.GetVolume(ctx, pool, dst); err != nil || v.SizeMiB != 2 || v.Format != api.FormatRaw {
		t.Fatalf("copied raw volume: %+v, %v", v, err)
	}

	// qcow2 linked clone: the copied overlay names the same base.
	base, clone, clone2 := uniq("base"), uniq("clone"), uniq("clone2")
	if _, err := l.CreateVolume(ctx, pool, base, api.VolumeSpec{SizeMiB: 4, Format: api.FormatQCOW2}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{clone, clone2} {
		if _, err := l.CreateVolume(ctx, pool, n, api.VolumeSpec{Format: api.FormatQCOW2, BaseVolume: base}); err != nil {
			t.Fatal(err)
		}
	}
	var img bytes.Buffer
	if _, err := l.ReadVolume(ctx, pool, clone, &img); err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(img.Bytes(), []byte("QFI\xfb")) {
		t.Fatalf("qcow2 content does not start with the qcow2 magic: % x", img.Bytes()[:min(8, img.Len())])
	}
	if err := l.WriteVolume(ctx, pool, clone2, bytes.NewReader(img.Bytes()), int64(img.Len())); err != nil {
		t.Fatal(err)
	}
	v, err := l.GetVolume(ctx, pool, clone2)
	if err != nil || v.BaseVolume != base || v.Format != api.FormatQCOW2 || v.SizeMiB != 4 {
		t.Fatalf("copied clone: %+v, %v", v, err)
	}
}
