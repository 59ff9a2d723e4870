package kvm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAccQueryReal_virshDefinedDomain: on the real stack, a domain made with
// `virsh define` (no kvm-hostd metadata; a disk that is a volume made with
// `virsh vol-create-as`, a disk file outside every pool, a NIC on a Linux
// bridge) is found by `terraform query`, and the configuration
// -generate-config-out writes imports it with an empty plan, the devices
// kvm_vm cannot describe named in a warning. The domain is only defined,
// never started: nothing boots.
func TestAccQueryReal_virshDefinedDomain(t *testing.T) {
	tf := modernTerraform(t)
	prefix := realPrefix("qy")
	c, _ := realStart(t, prefix)
	dom, vol := prefix+"db", prefix+"root"
	virsh := func(args ...string) string {
		t.Helper()
		out, _, err := realVirsh(args...)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(out)
	}
	virsh("vol-create-as", "default", vol, "16M", "--format", "qcow2")
	t.Cleanup(func() { _, _, _ = realVirsh("vol-delete", "--pool", "default", vol) })
	volPath := virsh("vol-path", "--pool", "default", vol)
	xml := fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='%s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/legacy-%s/data.img'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <mac address='52:54:00:5e:71:0a'/>
      <source bridge='brlegacy0'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>
`, dom, volPath, prefix)
	file := filepath.Join(t.TempDir(), "domain.xml")
	if err := os.WriteFile(file, []byte(xml), 0o644); err != nil {
		t.Fatal(err)
	}
	virsh("define", file)
	// Before the sweep (cleanups run last first): kvm-hostd's delete would do,
	// but this is the tool that made it.
	t.Cleanup(func() { _, _, _ = realVirsh("undefine", dom) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	queryAdopt(ctx, t, c, tf, prefix, []string{"host-a/" + dom, "host-a/default/" + vol}, []string{"vdb", "52:54:00:5e:71:0a", "brlegacy0"})
	// Still defined as virsh made it, both disks and the NIC in place.
	x := virsh("dumpxml", "--inactive", dom)
	for _, want := range []string{volPath, "data.img", "brlegacy0"} {
		if !strings.Contains(x, want) {
			t.Errorf("after the import the domain no longer has %s:\n%s", want, x)
		}
	}
}
