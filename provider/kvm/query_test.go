package kvm

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/knownvalue"
	"github.com/hashicorp/terraform-plugin-testing/querycheck"

	"github.com/kvmfleet/terraform-provider-kvm/internal/harness"
)

// foreignNodeXML is a libvirt test-driver node as another tool would have
// left it: a domain defined without kvm-hostd (no metadata), with one disk
// that is a volume of the pool, one that is a file outside every pool, and
// a NIC on a Linux bridge; the pool holds that volume and an unattached
// one. It is what `virsh define` and `virsh vol-create` make on a real host.
const foreignNodeXML = `<node>
  <domain type='test'>
    <name>legacy-db</name>
    <uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>
    <memory unit='MiB'>256</memory>
    <currentMemory unit='MiB'>256</currentMemory>
    <vcpu>1</vcpu>
    <os><type>hvm</type></os>
    <devices>
      <disk type='file' device='disk'>
        <source file='/foreign-pool/legacy-db.qcow2'/>
        <target dev='vda' bus='virtio'/>
      </disk>
      <disk type='file' device='disk'>
        <source file='/srv/legacy/data.img'/>
        <target dev='vdb' bus='virtio'/>
      </disk>
      <interface type='bridge'>
        <mac address='52:54:00:aa:bb:01'/>
        <source bridge='br0'/>
        <model type='virtio'/>
      </interface>
    </devices>
  </domain>
  <pool type='dir'>
    <name>default</name>
    <uuid>35bb2ad9-388a-cdfe-461a-b8907f6e53fe</uuid>
    <capacity unit='GiB'>100</capacity>
    <allocation>0</allocation>
    <available unit='GiB'>100</available>
    <source/>
    <target><path>/foreign-pool</path></target>
    <volume type='file'>
      <name>legacy-db.qcow2</name>
      <capacity unit='MiB'>512</capacity>
      <allocation>0</allocation>
      <target><path>/foreign-pool/legacy-db.qcow2</path><format type='qcow2'/></target>
    </volume>
    <volume type='file'>
      <name>legacy-spare.raw</name>
      <capacity unit='MiB'>128</capacity>
      <allocation>0</allocation>
      <target><path>/foreign-pool/legacy-spare.raw</path><format type='raw'/></target>
    </volume>
  </pool>
</node>
`

// foreignHosts starts hosts on a test-driver node holding foreignNodeXML
// (each kvm-hostd process loads its own copy).
func foreignHosts(t *testing.T, hosts ...string) *harness.Cluster {
	t.Helper()
	testAccPreCheck(t)
	node := filepath.Join(t.TempDir(), "foreign-node.xml")
	if err := os.WriteFile(node, []byte(foreignNodeXML), 0o644); err != nil {
		t.Fatal(err)
	}
	return startHosts(t, harness.Options{Hosts: hosts, LibvirtURI: "test://" + node, ExtraArgs: vmTestHostArgs})
}

// terraform query lists every VM and disk of the fleet, the ones made
// outside Terraform too, with the filters host, name_prefix and tags.
func TestAccQuery_listFilters(t *testing.T) {
	modernTerraform(t)
	c := foreignHosts(t, "host-a", "host-b")
	own := c.ProviderHCL() + `
resource "kvm_disk" "web" {
  name     = "web-root"
  host     = "host-a"
  size_mib = 64
}

resource "kvm_vm" "web" {
  name       = "web"
  host       = "host-a"
  vcpu       = 1
  memory_mib = 64
  disks      = [{ disk_id = kvm_disk.web.id }]
  tags       = { team = "web" }
}
`
	s := knownvalue.StringExact
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: testAccProtoV6ProviderFactories,
		Steps: []resource.TestStep{
			{Config: own},
			{
				Query: true,
				Config: `
list "kvm_vm" "all" {
  provider = kvm
}
list "kvm_vm" "legacy_a" {
  provider = kvm
  config {
    host        = "host-a"
    name_prefix = "legacy"
  }
}
list "kvm_vm" "web" {
  provider = kvm
  config {
    tags = { team = "web" }
  }
}
list "kvm_disk" "all_b" {
  provider = kvm
  config {
    host = "host-b"
  }
}
list "kvm_disk" "web" {
  provider = kvm
  config {
    tags = { team = "web" }
  }
}
`,
				QueryResultChecks: []querycheck.QueryResultCheck{
					querycheck.ExpectLength("kvm_vm.all", 3),
					querycheck.ExpectIdentity("kvm_vm.all", map[string]knownvalue.Check{"host": s("host-b"), "name": s("legacy-db")}),
					querycheck.ExpectLength("kvm_vm.legacy_a", 1),
					querycheck.ExpectIdentity("kvm_vm.legacy_a", map[string]knownvalue.Check{"host": s("host-a"), "name": s("legacy-db")}),
					querycheck.ExpectLength("kvm_vm.web", 1),
					querycheck.ExpectIdentity("kvm_vm.web", map[string]knownvalue.Check{"host": s("host-a"), "name": s("web")}),
					querycheck.ExpectLength("kvm_disk.all_b", 2),
					querycheck.ExpectIdentity("kvm_disk.all_b", map[string]knownvalue.Check{"host": s("host-b"), "pool": s("default"), "name": s("legacy-spare.raw")}),
					querycheck.ExpectLength("kvm_disk.web", 1),
					querycheck.ExpectIdentity("kvm_disk.web", map[string]knownvalue.Check{"host": s("host-a"), "pool": s("default"), "name": s("web-root")}),
				},
			},
		},
	})
}

// The acceptance test of issue 18 item 2 on the test driver: `terraform
// query` finds a domain and volumes made outside Terraform;
// -generate-config-out writes configuration that imports them with an
// empty plan after; what kvm_vm cannot describe is named in a warning.
func TestAccQuery_generateConfigImports(t *testing.T) {
	tf := modernTerraform(t)
	c := foreignHosts(t, "host-a")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	w, err := harness.NewWorkdir(t.TempDir(), "adopt", tf)
	if err != nil {
		t.Fatal(err)
	}
	mainTF := "terraform {\n  required_providers {\n    kvm = { source = \"kvmfleet/kvm\" }\n  }\n}\n" + c.ProviderHCL()
	if err := w.WriteConfig(mainTF); err != nil {
		t.Fatal(err)
	}
	query := `
list "kvm_vm" "legacy" {
  provider         = kvm
  include_resource = true
  config {
    name_prefix = "legacy"
  }
}
list "kvm_disk" "legacy" {
  provider         = kvm
  include_resource = true
  config {
    name_prefix = "legacy"
  }
}
`
	if err := os.WriteFile(filepath.Join(w.Dir, "adopt.tfquery.hcl"), []byte(query), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := w.Stdout(ctx, "query", "-json", "-no-color")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var found []string
	var warned bool
	for _, line := range strings.Split(out, "\n") {
		var msg struct {
			Type         string `json:"type"`
			ListResource struct {
				Address     string         `json:"address"`
				DisplayName string         `json:"display_name"`
				Identity    map[string]any `json:"identity"`
			} `json:"list_resource_found"`
			Diagnostic struct {
				Summary string `json:"summary"`
				Detail  string `json:"detail"`
			} `json:"diagnostic"`
		}
		if json.Unmarshal([]byte(line), &msg) != nil {
			continue
		}
		if msg.Type == "list_resource_found" {
			found = append(found, msg.ListResource.DisplayName)
		}
		if msg.Type == "diagnostic" && strings.Contains(msg.Diagnostic.Summary, "Cannot Describe") &&
			strings.Contains(msg.Diagnostic.Detail, "vdb") && strings.Contains(msg.Diagnostic.Detail, "br0") {
			warned = true
		}
	}
	want := []string{"host-a/legacy-db", "host-a/default/legacy-db.qcow2", "host-a/default/legacy-spare.raw"}
	for _, id := range want {
		if !strings.Contains(strings.Join(found, " "), id) {
			t.Errorf("terraform query did not find %s; found %v\n%s", id, found, out)
		}
	}
	if !warned {
		t.Errorf("terraform query named no warning for the disk outside the pool (vdb) and the NIC on br0:\n%s", out)
	}
	if t.Failed() {
		return
	}

	if out, err := w.Run(ctx, "query", "-generate-config-out=generated.tf", "-no-color"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	gen, err := os.ReadFile(filepath.Join(w.Dir, "generated.tf"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("generated configuration:\n%s", gen)
	if out, err := w.Run(ctx, "apply", "-auto-approve", "-input=false", "-no-color"); err != nil {
		t.Fatalf("importing the generated configuration: %v\n%s", err, out)
	} else if !strings.Contains(out, "3 imported, 0 added, 0 changed, 0 destroyed") {
		t.Fatalf("the import of the generated configuration changed something:\n%s", out)
	}
	if out, err := w.Run(ctx, "plan", "-detailed-exitcode", "-input=false", "-no-color"); err != nil {
		t.Fatalf("plan after import is not empty: %v\n%s", err, out)
	}
	// The devices kvm_vm does not describe are still on the domain.
	cl := testAccVMClient(t, c, "host-a")
	vm, err := cl.GetVM(ctx, "legacy-db")
	if err != nil {
		t.Fatal(err)
	}
	if len(vm.Disks) != 2 || len(vm.Interfaces) != 1 {
		t.Errorf("legacy-db now has %d disks and %d NICs, want 2 and 1", len(vm.Disks), len(vm.Interfaces))
	}
	// Leave the adopted objects to the test driver: nothing to destroy.
	if out, err := w.Run(ctx, "state", "rm", "kvm_vm.legacy_0", "kvm_disk.legacy_0", "kvm_disk.legacy_1"); err != nil {
		t.Logf("%v\n%s", err, out)
	}
}
