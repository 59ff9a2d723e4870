package hypervisor

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

// The extras of an rbd image live in files under the state directory:
// written, read back, removed when empty; without a state directory only
// "nothing to record" is accepted.
func TestNetworkVolumeMeta(t *testing.T) {
	l := &Libvirt{}
	const path = "kvm/rbd-root"
	if err := l.writeMeta(path, volMeta{Base: "rbd-base"}); !api.IsCode(err, api.CodeUnsupported) {
		t.Fatalf("without a state dir: %v, want unsupported", err)
	}
	if err := l.writeMeta(path, volMeta{}); err != nil {
		t.Fatalf("nothing to record without a state dir: %v", err)
	}
	dir := t.TempDir()
	l.SetStateDir(dir)
	m := volMeta{Base: "rbd-base", SourceURL: "http://example.test/img", IOTune: &api.IOTune{ReadIOPSSec: 10}}
	if err := l.writeMeta(path, m); err != nil {
		t.Fatal(err)
	}
	got := l.readMeta(path)
	if got.Base != m.Base || got.SourceURL != m.SourceURL || got.IOTune == nil || got.IOTune.ReadIOPSSec != 10 {
		t.Fatalf("read back %+v, want %+v", got, m)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "volume-meta", "*"))
	if len(files) != 1 || filepath.Base(files[0]) != "kvm%2Frbd-root.json" {
		t.Fatalf("files %v", files)
	}
	if err := l.writeMeta(path, volMeta{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(files[0]); !os.IsNotExist(err) {
		t.Fatalf("empty metadata left its file: %v", err)
	}
	if !l.readMeta(path).isZero() {
		t.Fatal("removed metadata still reads")
	}
	if isFilePath(path) || !isFilePath("/var/lib/kvm-hostd/pool/x") {
		t.Fatal("isFilePath")
	}
}
