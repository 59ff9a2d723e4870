package hypervisor

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kdomanski/iso9660"
	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

func TestErrorMapping(t *testing.T) {
	cases := []struct {
		err  libvirt.Error
		code string
		conn bool
	}{
		{libvirt.Error{Code: libvirt.ERR_NO_DOMAIN}, api.CodeNotFound, false},
		{libvirt.Error{Code: libvirt.ERR_NO_STORAGE_VOL}, api.CodeNotFound, false},
		{libvirt.Error{Code: libvirt.ERR_NO_STORAGE_POOL}, api.CodeNotFound, false},
		{libvirt.Error{Code: libvirt.ERR_NO_DOMAIN_SNAPSHOT}, api.CodeNotFound, false},
		{libvirt.Error{Code: libvirt.ERR_NO_SUPPORT}, api.CodeUnsupported, false},
		{libvirt.Error{Code: libvirt.ERR_INTERNAL_ERROR, Message: "client socket is closed"}, "", true},
		{libvirt.Error{Code: libvirt.ERR_SYSTEM_ERROR, Message: "Cannot write data: Broken pipe"}, "", true},
		{libvirt.Error{Code: libvirt.ERR_INTERNAL_ERROR, Message: "qemu unexpectedly closed the monitor"}, "", false},
	}
	for _, c := range cases {
		if got := isConnError(c.err); got != c.conn {
			t.Errorf("%v: conn=%v", c.err, got)
		}
		if c.code != "" && !api.IsCode(wrap(c.err, "ctx"), c.code) {
			t.Errorf("%v: want %s, got %v", c.err, c.code, wrap(c.err, "ctx"))
		}
	}
}

func TestMetadataKeepsForeignElements(t *testing.T) {
	x := &libvirtxml.Domain{Metadata: &libvirtxml.DomainMetadata{
		XML: `<other:x xmlns:other="urn:other">keep</other:x><kvm:instance xmlns:kvm="` + metaNS + `"><owner>old</owner></kvm:instance>`}}
	m := &instanceMeta{Owner: "new <&>", Tags: []metaTag{{Key: "k\"", Value: " v\n\r\t"}}}
	if err := setMeta(x, m); err != nil {
		t.Fatal(err)
	}
	got := metaOf(x)
	if !reflect.DeepEqual(got, m) {
		t.Fatalf("got %+v want %+v", got, m)
	}
	if want := `<other:x xmlns:other="urn:other">keep</other:x>`; x.Metadata.XML[:len(want)] != want {
		t.Fatalf("foreign metadata lost: %s", x.Metadata.XML)
	}
}

func TestDevNames(t *testing.T) {
	for i, want := range map[int]string{0: "vda", 1: "vdb", 25: "vdz", 26: "vdaa", 27: "vdab"} {
		if got := devName("vd", i); got != want {
			t.Errorf("%d: %s != %s", i, got, want)
		}
	}
}

func TestSeedISO(t *testing.T) {
	img, err := seedISO("vm1", &api.CloudInit{UserData: "#cloud-config\n", NetworkConfig: "version: 2\n"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := iso9660.OpenImage(bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	if label, _ := r.Label(); !strings.EqualFold(label, "cidata") {
		t.Fatalf("label %q", label)
	}
	root, err := r.RootDir()
	if err != nil {
		t.Fatal(err)
	}
	kids, err := root.GetChildren()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, k := range kids {
		names = append(names, k.Name())
	}
	sort.Strings(names)
	if want := []string{"meta-data", "network-config", "user-data"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("files %v", names)
	}
}

// The seed holds user-data (keys, passwords): only its owner may read it.
func TestSeedISOIsPrivate(t *testing.T) {
	dir := t.TempDir()
	p, err := writeSeedISO(dir, "vm1", &api.CloudInit{UserData: "#cloud-config\npassword: hunter2\n"})
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		t.Fatalf("seed ISO mode %#o, want no access for group and others", perm)
	}
	if !strings.HasSuffix(p, api.SeedVolumeSuffix) {
		t.Fatalf("seed path %s does not end in %s", p, api.SeedVolumeSuffix)
	}
}

// The domain XML, which any read-only libvirt client can read, never holds
// user-data; the read-back carries its hash.
func TestUserDataNotInDomainXML(t *testing.T) {
	m := &instanceMeta{}
	spec := &api.VMSpec{VCPU: 1, MemoryMiB: 64, CloudInit: &api.CloudInit{UserData: "#cloud-config\npassword: hunter2\n", MetaData: "instance-id: a\n"}}
	d, err := buildDomain(spec, domainParams{name: "ud", virtType: "test", meta: m})
	if err != nil {
		t.Fatal(err)
	}
	doc, err := d.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(doc, "hunter2") {
		t.Fatalf("domain XML holds the user data:\n%s", doc)
	}
	if !strings.Contains(doc, api.UserDataHash(spec.CloudInit.UserData)) {
		t.Fatalf("domain XML lacks the user-data hash:\n%s", doc)
	}
}

// Every disk's backing chain is explicit in the domain XML and ends in an
// empty <backingStore/>, so QEMU never follows a backing file named inside
// an image (a downloaded qcow2 pointing at /etc/shadow, say).
func TestDiskBackingChainExplicit(t *testing.T) {
	spec := &api.VMSpec{VCPU: 1, MemoryMiB: 64}
	disks := []resolvedDisk{
		{VMDisk: api.VMDisk{Pool: "default", Volume: "plain"}, Path: "/pool/plain", Format: "raw"},
		{VMDisk: api.VMDisk{Pool: "default", Volume: "clone"}, Path: "/pool/clone", Format: "qcow2",
			Backing: []backingFile{{Path: "/pool/mid", Format: "qcow2"}, {Path: "/pool/base", Format: "raw"}}},
	}
	d, err := buildDomain(spec, domainParams{name: "chain", virtType: "kvm", disks: disks, seedISO: "/pool/chain-cidata.iso", meta: &instanceMeta{}})
	if err != nil {
		t.Fatal(err)
	}
	doc, err := d.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(doc, "<backingStore></backingStore>") + strings.Count(doc, "<backingStore/>"); n != 3 {
		t.Errorf("%d empty backingStore elements, want 3 (one per chain end):\n%s", n, doc)
	}
	var back libvirtxml.Domain
	if err := back.Unmarshal(doc); err != nil {
		t.Fatal(err)
	}
	got := back.Devices.Disks
	if len(got) != 3 {
		t.Fatalf("%d disks", len(got))
	}
	for _, i := range []int{0, 2} {
		if bs := got[i].BackingStore; bs == nil || (bs.Source != nil && bs.Source.File != nil) || bs.BackingStore != nil {
			t.Errorf("disk %d: backingStore %+v, want an empty <backingStore/>", i, bs)
		}
	}
	bs := got[1].BackingStore
	if bs == nil || bs.Source == nil || bs.Source.File.File != "/pool/mid" || bs.Format.Type != "qcow2" {
		t.Fatalf("clone: first backing %+v", bs)
	}
	bs = bs.BackingStore
	if bs == nil || bs.Source == nil || bs.Source.File.File != "/pool/base" || bs.Format.Type != "raw" {
		t.Fatalf("clone: second backing %+v", bs)
	}
	if end := bs.BackingStore; end == nil || (end.Source != nil && end.Source.File != nil) {
		t.Fatalf("clone chain does not end in an empty <backingStore/>: %+v", end)
	}
}

// kvm-hostd never chmods an operator's directories: a pool directory under
// a parent QEMU cannot traverse is refused with the directory to fix.
func TestEnsurePoolDirNeverChmodsParents(t *testing.T) {
	base := t.TempDir()
	for _, d := range []string{filepath.Dir(base), base} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	parent := filepath.Join(base, "private")
	if err := os.Mkdir(parent, 0o700); err != nil {
		t.Fatal(err)
	}
	pool := filepath.Join(parent, "a", "pool")
	err := ensurePoolDir(pool)
	if err == nil || !strings.Contains(err.Error(), parent) || !strings.Contains(err.Error(), "chmod o+x") {
		t.Fatalf("err %v, want one naming %s and the fix", err, parent)
	}
	if st, _ := os.Stat(parent); st.Mode().Perm() != 0o700 {
		t.Fatalf("parent mode changed to %#o", st.Mode().Perm())
	}
	if err := os.Chmod(parent, 0o711); err != nil {
		t.Fatal(err)
	}
	if err := ensurePoolDir(pool); err != nil {
		t.Fatalf("traversable parent: %v", err)
	}
	if st, _ := os.Stat(pool); st.Mode().Perm() != 0o755 {
		t.Fatalf("pool dir mode %#o, want 0755", st.Mode().Perm())
	}
}

// A shutdown timeout read back from domain metadata (which anyone with
// libvirt access can edit) is clamped, never multiplied into an overflowed
// duration.
func TestShutdownTimeoutClamped(t *testing.T) {
	p := func(v int64) *int64 { return &v }
	for _, c := range []struct {
		sec  *int64
		want time.Duration
	}{
		{nil, defaultShutdownTimeout},
		{p(0), 0},
		{p(30), 30 * time.Second},
		{p(api.MaxShutdownTimeoutSec + 1), api.MaxShutdownTimeoutSec * time.Second},
		{p(9223372037), api.MaxShutdownTimeoutSec * time.Second},
		{p(math.MaxInt64), api.MaxShutdownTimeoutSec * time.Second},
		{p(-1), 0},
	} {
		if got := shutdownTimeoutSec(c.sec); got != c.want {
			t.Errorf("shutdownTimeoutSec(%v) = %v, want %v", c.sec, got, c.want)
		}
	}
}
