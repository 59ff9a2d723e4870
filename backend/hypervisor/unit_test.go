package hypervisor

import (
	"bytes"
	"reflect"
	"sort"
	"strings"
	"testing"

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
