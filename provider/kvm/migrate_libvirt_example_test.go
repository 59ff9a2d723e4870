package kvm

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// libvirtProviderNodeXML is a test-driver node holding what the
// dmacvicar/libvirt provider leaves on a host: a libvirt_volume in the pool
// "default" and a libvirt_domain booting from it, with a NIC on the libvirt
// network "default" and no kvm-hostd metadata.
const libvirtProviderNodeXML = `<node>
  <network>
    <name>default</name>
    <bridge name='virbr0'/>
    <forward/>
    <ip address='192.168.122.1' netmask='255.255.255.0'/>
  </network>
  <domain type='test'>
    <name>db</name>
    <uuid>2b0e4f4c-3f37-4c53-9d0a-51ad3e2a6f70</uuid>
    <memory unit='MiB'>2048</memory>
    <currentMemory unit='MiB'>2048</currentMemory>
    <vcpu>2</vcpu>
    <os><type>hvm</type></os>
    <devices>
      <disk type='file' device='disk'>
        <source file='/libvirt-pool/db-root.qcow2'/>
        <target dev='vda' bus='virtio'/>
      </disk>
      <interface type='network'>
        <mac address='52:54:00:6d:2a:10'/>
        <source network='default'/>
        <model type='virtio'/>
      </interface>
    </devices>
  </domain>
  <pool type='dir'>
    <name>default</name>
    <uuid>0c2e9f0e-8d0f-4a4e-bb4e-3b0c2a6f4d11</uuid>
    <capacity unit='GiB'>100</capacity>
    <allocation>0</allocation>
    <available unit='GiB'>100</available>
    <source/>
    <target><path>/libvirt-pool</path></target>
    <volume type='file'>
      <name>db-root.qcow2</name>
      <capacity unit='MiB'>10240</capacity>
      <allocation>0</allocation>
      <target><path>/libvirt-pool/db-root.qcow2</path><format type='qcow2'/></target>
    </volume>
  </pool>
</node>
`

// examples/migrate-from-libvirt applies as written against what the
// libvirt provider left on a host: both objects are imported, nothing is
// added, changed or destroyed, the plan after is empty, the NIC kvm_vm
// cannot describe is named in a warning and stays on the domain.
func TestAccExampleMigrateFromLibvirt(t *testing.T) {
	testAccPreCheck(t)
	tf := os.Getenv("TF_ACC_TERRAFORM_PATH")
	if tf == "" {
		t.Skip("set TF_ACC_TERRAFORM_PATH (scripts/terraform-path.sh)")
	}
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile(filepath.Join(root, "examples", "migrate-from-libvirt", "main.tf"))
	if err != nil {
		t.Fatal(err)
	}
	node := filepath.Join(t.TempDir(), "libvirt-provider-node.xml")
	if err := os.WriteFile(node, []byte(libvirtProviderNodeXML), 0o644); err != nil {
		t.Fatal(err)
	}
	c := startHosts(t, harness.Options{Hosts: []string{"host-a"}, LibvirtURI: "test://" + node, ExtraArgs: vmTestHostArgs})
	w, err := harness.NewWorkdir(t.TempDir(), "migrate", tf, "KVM_HOSTS="+c.KVMHosts(), "KVM_TOKEN="+c.Token)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteConfig(string(example)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := w.Run(ctx, "apply", "-auto-approve", "-input=false", "-no-color")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(out, "2 imported, 0 added, 0 changed, 0 destroyed") {
		t.Errorf("the migration did more than import:\n%s", out)
	}
	if !strings.Contains(out, "52:54:00:6d:2a:10") {
		t.Errorf("no warning names the NIC on the libvirt network:\n%s", out)
	}
	if out, err := w.Run(ctx, "plan", "-detailed-exitcode", "-input=false", "-no-color"); err != nil {
		t.Errorf("plan after the migration is not empty: %v\n%s", err, out)
	}
	vm, err := testAccVMClient(t, c, "host-a").GetVM(ctx, "db")
	if err != nil {
		t.Fatal(err)
	}
	if !vm.Running || len(vm.Interfaces) != 1 || len(vm.Disks) != 1 {
		t.Errorf("db after the migration: running %v, %d NICs, %d disks; want running with its NIC and disk", vm.Running, len(vm.Interfaces), len(vm.Disks))
	}
}
