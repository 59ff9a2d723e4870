package hypervisor

import (
	"bytes"
	"regexp"
	"testing"

	"libvirt.org/go/libvirtxml"

	"github.com/kvmfleet/terraform-provider-kvm/internal/api"
)

func TestDeriveDiskKey(t *testing.T) {
	master := bytes.Repeat([]byte{7}, 32)
	k1, err := deriveDiskKey(master, "prod", "default", "data")
	if err != nil {
		t.Fatal(err)
	}
	// Stable: another host with the same master key derives the same.
	again, _ := deriveDiskKey(bytes.Clone(master), "prod", "default", "data")
	if !bytes.Equal(k1, again) {
		t.Fatal("derivation is not stable")
	}
	if len(k1) != 64 || !regexp.MustCompile(`^[0-9a-f]{64}$`).Match(k1) {
		t.Fatalf("passphrase %q is not 32 bytes in hex", k1)
	}
	if bytes.Contains(k1, master) {
		t.Fatal("the passphrase contains the master key")
	}
	seen := map[string]string{string(k1): "prod/default/data"}
	for _, v := range []struct{ key, pool, vol string }{
		{"prod", "default", "data2"}, {"prod", "other", "data"}, {"dev", "default", "data"},
		// The separator keeps the fields apart.
		{"prod", "defaul", "tdata"}, {"prod", "default\x00x", "data"},
	} {
		k, _ := deriveDiskKey(master, v.key, v.pool, v.vol)
		if prev, dup := seen[string(k)]; dup {
			t.Fatalf("%v derives the same key as %s", v, prev)
		}
		seen[string(k)] = v.key + "/" + v.pool + "/" + v.vol
	}
	other := bytes.Repeat([]byte{8}, 32)
	if k, _ := deriveDiskKey(other, "prod", "default", "data"); bytes.Equal(k, k1) {
		t.Fatal("another master key derives the same disk key")
	}
}

func TestDiskSecretUUID(t *testing.T) {
	u := diskSecretUUID("prod", "default", "data")
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(u) {
		t.Fatalf("UUID %q", u)
	}
	if u != diskSecretUUID("prod", "default", "data") || u == diskSecretUUID("prod", "default", "data2") {
		t.Fatal("UUID not stable or not distinct")
	}
}

// The domain XML names the secret by UUID and nothing else.
func TestDiskEncryptionXML(t *testing.T) {
	spec := &api.VMSpec{VCPU: 1, MemoryMiB: 64, Disks: []api.VMDisk{{Volume: "data"}}}
	x, err := buildDomain(spec, domainParams{name: "v", virtType: "qemu", meta: &instanceMeta{}, probe: &HostProbe{}, disks: []resolvedDisk{{
		VMDisk: api.VMDisk{Volume: "data", Pool: "default"}, Path: "/p/data", Format: "qcow2", EncryptionKey: "prod"}}})
	if err != nil {
		t.Fatal(err)
	}
	doc, err := x.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back := &libvirtxml.Domain{}
	if err := back.Unmarshal(doc); err != nil {
		t.Fatal(err)
	}
	e := back.Devices.Disks[0].Source.Encryption
	if e == nil || e.Format != "luks" || len(e.Secrets) != 1 || e.Secrets[0].Type != "passphrase" ||
		e.Secrets[0].UUID != diskSecretUUID("prod", "default", "data") || e.Secrets[0].Usage != "" {
		t.Fatalf("disk encryption %+v in\n%s", e, doc)
	}
}

// SetKeys keeps its own copy: kvm-hostd clears the bytes it read.
func TestSetKeysCopies(t *testing.T) {
	l := &Libvirt{}
	k := bytes.Repeat([]byte{9}, 32)
	l.SetKeys(map[string][]byte{"prod": k})
	clear(k)
	got, ok := l.masterKey("prod")
	if !ok || !bytes.Equal(got, bytes.Repeat([]byte{9}, 32)) {
		t.Fatalf("key %v after the caller cleared its copy", got)
	}
	if names := l.KeyNames(); len(names) != 1 || names[0] != "prod" {
		t.Fatalf("names %v", names)
	}
}
